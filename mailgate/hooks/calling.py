"""Calling hooks that may be async: pluggy never awaits, so mailgate does.

A coroutine is not None, so pluggy's own firstresult would let the first
async plugin win unheard; every hook is called through these functions.
"""

from __future__ import annotations

import inspect
from typing import Any

from pluggy import HookCaller
from twisted.internet.defer import Deferred


async def settle(result: object) -> Any:
    """Await a Deferred or coroutine; pass a plain value through."""
    if isinstance(result, Deferred) or inspect.isawaitable(result):
        return await result
    return result


async def call_all(hook: HookCaller, **kwargs: object) -> list[Any]:
    """Call every implementation and await each answer, in pluggy's order."""
    return [await settle(result) for result in hook(**kwargs)]


async def first_answer(hook: HookCaller, **kwargs: object) -> Any | None:
    """The first non-None answer, awaiting each before asking the next.

    pluggy's own firstresult would stop at an unawaited coroutine (which is
    not None), letting the first async plugin win unheard.
    """
    for impl in reversed(hook.get_hookimpls()):  # pluggy's call order
        if impl.hookwrapper or impl.wrapper:
            continue
        answer = await settle(impl.function(*(kwargs[name] for name in impl.argnames)))
        if answer is not None:
            return answer
    return None
