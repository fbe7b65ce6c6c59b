"""Calling hooks: awaiting async answers, a time limit per plugin, failing closed.

pluggy never awaits, and a coroutine is not None, so its own firstresult
would let the first async plugin win unheard: mailgate calls every hook
through `Hooks`. Each plugin's answer gets `timeout_seconds` (30 s by
default, as Haraka's plugin timeout). A plugin that raises, runs out of
time or answers nonsense is a `HookFailed` naming it, logged here once;
callers turn it into a temporary failure (4xx), so a broken plugin never
lets through mail it would have refused. `mailgate.TemporaryFailure`,
`PermanentFailure` and `ConfigError` are answers, not failures: they pass through.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Awaitable, Callable

from pluggy import HookCaller, HookImpl, PluginManager
from twisted.internet.defer import Deferred, TimeoutError as DeferredTimeout, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailgate.config import ConfigError
from mailgate.core.errors import DeliveryError
from mailgate.core.reply import Reply, ReplyError

log = Logger()

DEFAULT_TIMEOUT_SECONDS = 30.0
FAILED = Reply(451, "4.3.0", "Temporary failure, try again later")  # what a client hears for a broken plugin


class HookFailed(Exception):
    """A plugin did not answer a hook properly; the message is one line for the log."""

    def __init__(self, hook: str, plugin: str, problem: str) -> None:
        super().__init__(f"plugin {plugin}: {hook}: {problem}")
        self.hook, self.plugin, self.problem = hook, plugin, problem


class Hooks:
    """The hooks of one plugin manager, called with time limits on `clock`.

    `propagate_errors` is for mailgate.testing: a plugin's exception then
    reaches its author's test as itself, with its traceback, instead of
    becoming the HookFailed the server answers 4xx for.
    """

    def __init__(self, manager: PluginManager, clock: IReactorTime,
                 timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS, propagate_errors: bool = False) -> None:
        self.manager = manager
        self._clock = clock
        self.timeout_seconds = timeout_seconds
        self._propagate_errors = propagate_errors
        self._told: list[tuple[str, list[HookImpl], dict[str, object]]] = []  # notify()'s, for the next turn
        self._implementations: dict[str, list[HookImpl]] = {}

    def use(self, manager: PluginManager, timeout_seconds: float) -> None:
        """Call `manager`'s plugins from now on: a reload, for the queue's Hooks (the sessions' stay as they are)."""
        self.manager, self.timeout_seconds = manager, timeout_seconds
        self._implementations.clear()  # read again from the new manager

    def implemented(self, name: str) -> bool:
        """Whether any plugin implements the hook: callers skip building its arguments if not."""
        return bool(self._impls(name))

    async def first(self, name: str, /, **kwargs: object) -> Any | None:
        """The first non-None answer, in pluggy's order; each plugin awaited before the next."""
        for impl in self._impls(name):
            answer = await self._call(name, impl, kwargs)
            if answer is not None:
                return answer
        return None

    async def each(self, name: str, /, **kwargs: object) -> list[Any]:
        """Every plugin's answer, in pluggy's order."""
        return [await self._call(name, impl, kwargs) for impl in self._impls(name)]

    async def refusal(self, name: str, /, **kwargs: object) -> Reply | None:
        """The first plugin's refusal (a 4xx/5xx reply string or Reply), or None to go on.

        A 2xx or malformed answer is the plugin's mistake: HookFailed, never
        silently accepted.
        """
        for impl in self._impls(name):
            answer = await self._call(name, impl, kwargs)
            if answer is not None:
                return as_refusal(name, impl.plugin_name, answer)
        return None

    def plugins(self, name: str, /) -> list[tuple[str, Callable[..., Awaitable[Any]]]]:
        """(plugin name, a coroutine function of the hook's arguments), in pluggy's order.

        For hooks whose arguments change as plugins answer (mailgate_message
        passes each plugin the message as the ones before it left it); each
        call has the same time limit and failure handling as `first`.
        """
        return [(impl.plugin_name, functools.partial(self._call_kw, name, impl)) for impl in self._impls(name)]

    async def _call_kw(self, name: str, impl: HookImpl, /, **kwargs: object) -> Any:
        return await self._call(name, impl, kwargs)

    def notify(self, name: str, /, **kwargs: object) -> None:
        """Call every plugin on the next reactor turn, never awaited: for events.

        Nothing a plugin does (slowness, an exception) reaches the caller;
        failures are logged. Costs nothing when no plugin implements it.
        """
        impls = self._impls(name)
        if not impls:
            return
        if not self._told:
            self._clock.callLater(0, self._notify_now)
        self._told.append((name, impls, kwargs))

    def _notify_now(self) -> None:
        """Everything told since the last turn, in the order it was told."""
        told, self._told = self._told, []
        for name, impls, kwargs in told:
            for impl in impls:
                self._notify_one(name, impl, kwargs)

    def _notify_one(self, name: str, impl: HookImpl, kwargs: dict[str, object]) -> None:
        """One plugin told, at once when it answers at once (most event plugins): no coroutine, no
        Deferred per event; an awaitable answer gets `_call`'s time limit and failure handling."""
        try:
            answer = impl.function(*(kwargs[arg] for arg in impl.argnames))
        except Exception as error:
            log.failure("plugin {plugin}: {hook} raised", plugin=impl.plugin_name, hook=name)
            log.error("{hook}: {error}", hook=name, error=HookFailed(name, impl.plugin_name,
                                                                     f"raised {type(error).__name__}: {error}"))
            return
        if isinstance(answer, Deferred) or inspect.isawaitable(answer):
            work = ensureDeferred(answer if isinstance(answer, Deferred) else _awaited(answer))
            self._within(work).addErrback(self._log_notify_failure, name)

    @staticmethod
    def _log_notify_failure(failure: Failure, name: str) -> None:
        log.error("{hook}: {error}", hook=name, error=failure.getErrorMessage())

    def _impls(self, name: str) -> list[HookImpl]:
        """The hook's plugins, the one asked first first. Read once per hook: every plugin is registered
        before the manager is handed to Hooks (build_plugin_manager), and a session asks ~14 times
        a message, which pluggy would answer with a new list each time."""
        impls = self._implementations.get(name)
        if impls is None:
            caller: HookCaller = getattr(self.manager.hook, name)
            impls = [impl for impl in reversed(caller.get_hookimpls()) if not (impl.hookwrapper or impl.wrapper)]
            self._implementations[name] = impls
        return impls

    async def _call(self, name: str, impl: HookImpl, kwargs: dict[str, object]) -> Any:
        plugin = impl.plugin_name
        try:
            answer = impl.function(*(kwargs[arg] for arg in impl.argnames))
            if isinstance(answer, Deferred) or inspect.isawaitable(answer):
                answer = await self._within(ensureDeferred(answer if isinstance(answer, Deferred) else _awaited(answer)))
        except (DeliveryError, ConfigError):
            raise  # a plugin's deliberate answer (TemporaryFailure, PermanentFailure, a bad setting)
        except DeferredTimeout:
            raise failed(name, plugin, f"no answer within {self.timeout_seconds:g} s") from None
        except Exception as error:
            if self._propagate_errors:
                raise
            log.failure("plugin {plugin}: {hook} raised", plugin=plugin, hook=name)  # the traceback, for its author
            raise HookFailed(name, plugin, f"raised {type(error).__name__}: {error}") from error
        return answer

    def _within(self, work: Deferred[Any]) -> Deferred[Any]:
        return work.addTimeout(self.timeout_seconds, self._clock)


async def _awaited(answer: Awaitable[Any]) -> Any:
    """Any awaitable as a coroutine, which a Deferred (and so a time limit) can wrap."""
    return await answer


def failed(hook: str, plugin: str, problem: str) -> HookFailed:
    """A HookFailed, logged once here: callers only answer for it (FAILED)."""
    failure = HookFailed(hook, plugin, problem)
    log.error("{failure}; failing closed", failure=failure)
    return failure


def as_refusal(hook: str, plugin: str, answer: object) -> Reply:
    """A plugin's refusal: a Reply or "CODE X.Y.Z text" with a 4xx or 5xx code."""
    try:
        reply = answer if isinstance(answer, Reply) else Reply.parse(str(answer)) if isinstance(answer, str) else None
    except ReplyError as error:
        raise failed(hook, plugin, f"not a refusal reply: {error}") from None
    if reply is None or reply.code < 400:
        raise failed(hook, plugin, f"not a refusal reply (4xx or 5xx): {answer!r:.80}")
    if not reply.enhanced:  # RFC 3463: every refusal carries an enhanced code
        reply = Reply(reply.code, f"{str(reply.code)[0]}.7.1", reply.text or "Refused")
    return reply
