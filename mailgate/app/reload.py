"""Reload (SIGHUP, `mailgate reload`): the configuration read again, checked, and applied to what starts next.

In order, any step refusing the reload with one log line per problem and
nothing changed:

1. the `--config` file is read and checked as at start-up;
2. keys that need a restart (RESTART_KEYS) are logged and keep the values
   they run with; everything else is applied;
3. the TLS pair is loaded (a certificate that does not load refuses it);
4. a new plugin manager is built: new built-in objects, except those
   marked `process_wide`, and the operator's plugins (modules, entry
   points: the same objects); every `mailgate_configure` runs with the new
   configuration. If one raises or fails, the plugins shared with the
   running configuration are configured with it again, and nothing else
   changes;
5. the service takes the new generation (GatewayService.adopt): new
   sessions and queue attempts use it, sessions in flight finish on theirs.

The files (the configuration, the TLS pair) are read in the disk thread
pool, so sessions go on while a reload waits on the disk. The server never
exits on SIGHUP: whatever goes wrong is logged.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pluggy import PluginManager
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mailgate.app import preflight
from mailgate.builtin import load_plugins
from mailgate.config import ConfigError, GatewayConfig, load_config
from mailgate.hooks.calling import HookFailed, Hooks

if TYPE_CHECKING:
    from mailgate.app.service import GatewayService  # which builds the Reloader

log = Logger()

RESTART_KEYS: tuple[tuple[str, Callable[[GatewayConfig], object]], ...] = (
    ("listen", lambda config: config.listen),
    ("server.state_dir", lambda config: config.server.state_dir),
    ("server.workers", lambda config: config.server.workers),
    ("store.maildir_root", lambda config: config.store.maildir_root),
    ("metrics.endpoint", lambda config: config.metrics.endpoint),
    ("state", lambda config: config.state),
    # The server's one Admission and AUTH throttle hold counts that outlive a configuration (and,
    # with workers, live in the master): their limits are the start-up ones.
    ("limits.max_connections_per_ip", lambda config: config.limits.max_connections_per_ip),
    ("limits.connection_rate", lambda config: config.limits.connection_rate),
    ("limits.max_connections", lambda config: config.limits.max_connections),
    ("limits.auth_failures_per_account", lambda config: config.limits.auth_failures_per_account),
    ("limits.auth_failures_per_ip", lambda config: config.limits.auth_failures_per_ip),
    ("limits.auth_penalty", lambda config: config.limits.auth_penalty_seconds),
)


def needs_restart(running: GatewayConfig, new: GatewayConfig) -> list[str]:
    """The restart-only keys whose values differ."""
    return [key for key, value in RESTART_KEYS if value(running) != value(new)]


def as_running(running: GatewayConfig, new: GatewayConfig) -> GatewayConfig:
    """`new`, with the restart-only keys as they run."""
    server = {name: getattr(running.server, name) for name in ("state_dir", "workers") if hasattr(running.server, name)}
    return replace(
        new, listen=running.listen, server=replace(new.server, **server),
        store=replace(new.store, maildir_root=running.store.maildir_root),
        metrics=replace(new.metrics, endpoint=running.metrics.endpoint),
    )


class Reloader:
    """Runs reloads one at a time; a SIGHUP during one makes one more follow it."""

    def __init__(self, service: GatewayService, launched_in: str) -> None:
        self._service = service
        self._launched_in = launched_in  # relative plugins.paths are taken from there, as at start-up
        self._busy = self._again = False

    def request(self) -> Deferred | None:
        """Reload now, or after the reload under way; the Deferred fires when done."""
        if self._busy:
            self._again = True
            return None
        return Deferred.fromCoroutine(self._run())

    async def _run(self) -> None:
        self._busy = True
        try:
            while True:
                self._again = False
                await self.reload()
                if not self._again:
                    return
        finally:
            self._busy = False

    async def reload(self) -> bool:
        """One reload; True if the new configuration took over."""
        try:
            return await self._reload()
        except Exception:  # noqa: BLE001 - SIGHUP must never stop the server
            log.failure("reload: failed; the configuration in force is unchanged")
            self._count("refused")
            return False

    async def _reload(self) -> bool:
        service, generation = self._service, self._service.generation
        if generation is None:
            log.warn("reload: the server is still starting; nothing to reload yet")
            return False
        running, path = generation.config, service.config_path
        log.info("reload: reading {path}", path=path)
        try:
            new = self._with_plugin_paths(await service.run_blocking(load_config, path))
        except ConfigError as error:
            return self._refused(error.problems)
        for key in needs_restart(running, new):
            log.warn("reload: {key} changed: that needs a restart; it keeps its running value", key=key)
        new = as_running(running, new)
        try:
            tls = await service.run_blocking(preflight.load_tls, new) if service.shared.tls is not None else None
            manager = load_plugins(new, service.extra_plugins, service.shared.meters,
                                   previous=builtins(generation.hooks.manager))
        except ConfigError as error:
            return self._refused(error.problems)
        hooks = Hooks(manager, service.reactor, new.plugins.timeout_seconds)
        try:
            await hooks.each("mailgate_configure", config=new, reactor=service.reactor)
        except (ConfigError, HookFailed) as error:
            await self._configure_again(manager, generation.hooks.manager, running)
            return self._refused(error.problems if isinstance(error, ConfigError) else [str(error)])
        service.adopt(new, hooks, tls)
        self._count("applied")
        log.info("reload: {path} applied: generation {number} takes new sessions and queue attempts",
                 path=path, number=generation.number + 1)
        return True

    def _with_plugin_paths(self, config: GatewayConfig) -> GatewayConfig:
        paths = tuple(os.path.join(self._launched_in, path) for path in config.plugins.paths)
        return replace(config, plugins=replace(config.plugins, paths=paths))

    async def _configure_again(self, manager: PluginManager, running_manager: PluginManager,
                               running: GatewayConfig) -> None:
        """The plugins the running configuration shares with the refused one go back to it."""
        service = self._service
        shared = {id(plugin) for plugin in running_manager.get_plugins()}
        hooks = Hooks(manager, service.reactor, running.plugins.timeout_seconds)
        for name, configure in hooks.plugins("mailgate_configure"):
            if id(manager.get_plugin(name)) not in shared:
                continue
            try:
                await configure(config=running, reactor=service.reactor)
            except Exception as error:  # noqa: BLE001 - one plugin's trouble must not stop the others'
                log.error("reload: plugin {name}: configuring it again with the running configuration failed: "
                          "{error}", name=name, error=error)

    def _refused(self, problems: list[str]) -> bool:
        for problem in problems:
            log.error("reload: {problem}", problem=problem)
        generation = self._service.generation
        log.error("reload refused: the configuration in force (generation {number}) is unchanged",
                  number=generation.number if generation is not None else 0)
        self._count("refused")
        return False

    def _count(self, result: str) -> None:
        metrics = self._service.ops.metrics
        if metrics is not None:
            metrics.reloads.labels(result).inc()


def builtins(manager: PluginManager) -> list[Any]:
    """The built-in plugin objects registered in `manager` (mailgate.hooks.manager names them builtin.*)."""
    return [plugin for name, plugin in manager.list_name_plugin() if name.startswith("builtin.")]
