"""`twistd mailgate`: command-line options and the service they build (wiring only)."""

from __future__ import annotations

import os
import pwd
import sys
from typing import Any

from twisted.application.service import IService
from twisted.internet.defer import Deferred
from twisted.python import usage

from mailgate.app import worker, workers
from mailgate.config import ConfigError, GatewayConfig, load_config
from mailgate.builtin import load_plugins
from mailgate.hooks.calling import Hooks
from mailgate.ops import Operations
from mailgate.store.durable import Owner

DEFAULT_CONFIG = "etc/mailgate.toml"


class Options(usage.Options):
    synopsis = "[--config FILE]"
    optParameters = [["config", "c", DEFAULT_CONFIG, "the mailgate TOML configuration file"]]


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    try:
        config = load_config(options["config"])
        twistd, owner = getattr(options, "parent", None), twistd_owner(options)
        master = workers.master_service(config, options["config"], reactor, owner, twistd)  # server.workers > 1
        if master is not None:
            return master
        role = worker.process_role(config, reactor)  # a worker's listeners and queue; state.backend
        service = build_service(config, reactor, owner=owner, twistd=twistd,
                                config_path=os.path.abspath(options["config"]))
        return worker.attach(service, role, reactor)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        raise SystemExit(1) from None


def twistd_owner(options: usage.Options) -> Owner | None:
    """The uid and gid twistd will switch to after privilegedStartService, if it will.

    twistd's own options are our Options' `parent`, with --uid/--gid as
    numbers; a --uid without --gid means that user's group, as twistd does.
    Only root can give files away, and only root switches.
    """
    parent = getattr(options, "parent", None)
    if parent is None or os.geteuid() != 0:
        return None
    uid, gid = parent.get("uid"), parent.get("gid")
    if uid is None and gid is None:
        return None
    if uid is not None and gid is None:
        gid = pwd.getpwuid(uid).pw_gid
    return (-1 if uid is None else uid, gid)


def build_service(config: GatewayConfig, reactor: Any, extra_plugins: tuple = (),
                  owner: Owner | None = None, twistd: Any = None, config_path: str | None = None) -> IService:
    """Load plugins, let them configure, and build the gateway service.

    mailgate_configure runs here, before any port is bound, so a plugin's
    ConfigError stops start-up like a bad key does. A plugin that must wait
    on the network answers with a Deferred; listeners then open once it fires.
    The operations plugin (log lines, metrics of delivery events) is
    registered with the built-ins, before `extra_plugins`, and kept by reloads.
    """
    from mailgate.app.service import GatewayService

    ops = Operations(config, reactor.seconds)
    extra_plugins = (ops.plugin, *extra_plugins)
    hooks = Hooks(load_plugins(config, extra_plugins, ops.meters), reactor, config.plugins.timeout_seconds)
    configured = Deferred.fromCoroutine(hooks.each("mailgate_configure", config=config, reactor=reactor))
    if configured.called:  # every plugin answered synchronously: errors surface now
        failures: list[Any] = []
        configured.addErrback(failures.append)
        if failures:
            failures[0].raiseException()
    return GatewayService(config, hooks, reactor, configured, owner, twistd, ops=ops, extra_plugins=extra_plugins,
                          config_path=config_path, launched_in=os.getcwd())
