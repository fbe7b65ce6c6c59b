"""The plugin manager: the built-ins, entry points and `plugins.enable` modules, loaded in order."""

from __future__ import annotations

import importlib
import sys
from typing import Iterable, Sequence

from pluggy import PluginManager, PluginValidationError

from mailgate import hookspecs
from mailgate.config import ConfigError, GatewayConfig


def build_plugin_manager(
    config: GatewayConfig, builtins: Iterable[object], extra: Iterable[object] = ()
) -> PluginManager:
    """Register `builtins`, entry points, `plugins.enable` modules, then `extra`.

    Later registrations are asked first, so users' plugins can override the
    built-ins; `plugins.enable` is registered last entry first, so its first
    entry is asked first, as an operator reading the list would expect. A
    misspelt hook name fails here, at start-up.
    """
    manager = PluginManager("mailgate")
    manager.add_hookspecs(hookspecs)
    for plugin in builtins:
        manager.register(plugin, name=f"builtin.{type(plugin).__name__}")
    manager.load_setuptools_entrypoints("mailgate")
    _refuse_duplicates(config.plugins.enable)
    enabled = list(enumerate(_import_enabled(config.plugins.paths, config.plugins.enable)))
    for index, module in reversed(enabled):
        try:
            manager.register(module, name=config.plugins.enable[index])
        except (PluginValidationError, ValueError) as exc:  # bad hookimpl arguments; listed twice
            raise ConfigError([f"plugins.enable[{index}]: {' '.join(str(exc).split())}"]) from None
    for plugin in extra:
        manager.register(plugin)
    try:
        manager.check_pending()
    except Exception as exc:  # pluggy's PluginValidationError
        raise ConfigError([f"plugins.enable: {exc}"]) from None
    return manager


def _refuse_duplicates(names: Sequence[str]) -> None:
    for index, name in enumerate(names):
        if name in names[:index]:
            raise ConfigError([f"plugins.enable[{index}]: {name!r} is listed twice"])


def _import_enabled(paths: Sequence[str], names: Sequence[str]) -> list[object]:
    """Import each enabled module from the configured directories."""
    for path in reversed(paths):
        if path not in sys.path:
            sys.path.insert(0, path)
    modules: list[object] = []
    problems: list[str] = []
    for index, name in enumerate(names):
        try:
            modules.append(importlib.import_module(name))
        except Exception as exc:
            problems.append(f"plugins.enable[{index}]: cannot import {name!r}: {exc}")
    if problems:
        raise ConfigError(problems)
    return modules
