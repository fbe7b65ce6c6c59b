"""mailgate.app.reload: which keys need a restart, and a reload refused by a plugin changes nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock

from mailgate import hookimpl
from mailgate.app.reload import Reloader, as_running, builtins, needs_restart
from mailgate.builtin import load_plugins
from mailgate.config import ConfigError, GatewayConfig, parse_config
from mailgate.core.meters import NO_METERS
from mailgate.hooks.calling import Hooks

BASE = {
    "server": {"hostname": "mx.example.test", "state_dir": "var"},
    "listen": [{"name": "mx", "protocol": "smtp", "endpoint": "tcp:2525"}],
    "plugins": {"paths": [], "enable": []},
}
TOML = '[server]\nhostname = "mx.example.test"\n[[listen]]\nname = "mx"\nprotocol = "smtp"\nendpoint = "tcp:2525"\n' \
       '[plugins]\npaths = []\n'


def test_listeners_state_and_mail_directories_need_a_restart() -> None:
    running = parse_config(BASE)
    new = parse_config({**BASE, "listen": [{"name": "mx", "protocol": "smtp", "endpoint": "tcp:2526"}],
                        "server": {"hostname": "other.test", "state_dir": "/srv"}, "store": {"maildir_root": "m"},
                        "metrics": {"endpoint": "tcp:9025"}, "limits": {"max_recipients": 5}})
    assert needs_restart(running, new) == ["listen", "server.state_dir", "store.maildir_root", "metrics.endpoint"]
    kept = as_running(running, new)
    assert kept.listen == running.listen and kept.server.state_dir == "var" and kept.store == running.store
    assert kept.metrics.endpoint == "" and kept.server.hostname == "other.test"
    assert kept.limits.max_recipients == 5


class Picky:
    """Refuses a configuration whose hostname is refuse.test; records every configure."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    @hookimpl
    def mailgate_configure(self, config: GatewayConfig) -> None:
        self.seen.append(config.server.hostname)
        if config.server.hostname == "refuse.test":
            raise ConfigError(["plugin.picky: not that host"])


@dataclass
class FakeGeneration:
    number: int
    config: GatewayConfig
    hooks: Hooks


@dataclass
class FakeService:
    generation: FakeGeneration
    config_path: str
    extra_plugins: tuple
    reactor: Clock = field(default_factory=Clock)
    adopted: list[Any] = field(default_factory=list)

    shared = type("Shared", (), {"tls": None, "meters": NO_METERS})()
    ops = type("Ops", (), {"metrics": None})()

    def adopt(self, config: GatewayConfig, hooks: Hooks, tls: Any) -> None:
        self.adopted.append(config)

    def run_blocking(self, function: Any, *args: Any) -> Deferred:
        """The disk pool, here the caller's thread: the test stays synchronous."""
        return maybeDeferred(function, *args)


def service(tmp_path: Path, picky: Picky) -> FakeService:
    config = parse_config(BASE)
    manager = load_plugins(config, (picky,))
    generation = FakeGeneration(1, config, Hooks(manager, Clock()))
    return FakeService(generation, str(tmp_path / "mailgate.toml"), (picky,))


def reload(reloader: Reloader) -> bool:
    results: list[bool] = []
    Deferred.fromCoroutine(reloader.reload()).addCallback(results.append)
    return results[0]


def test_a_plugin_refusing_the_new_configuration_gets_the_running_one_back(tmp_path: Path) -> None:
    picky = Picky()
    fake = service(tmp_path, picky)
    reloader = Reloader(fake, str(tmp_path))  # type: ignore[arg-type]
    (tmp_path / "mailgate.toml").write_text(TOML.replace("mx.example.test", "refuse.test"))
    assert reload(reloader) is False
    assert picky.seen == ["refuse.test", "mx.example.test"] and fake.adopted == []
    (tmp_path / "mailgate.toml").write_text(TOML.replace("mx.example.test", "fine.test"))
    assert reload(reloader) is True
    assert [config.server.hostname for config in fake.adopted] == ["fine.test"]


def test_built_ins_are_new_but_the_process_wide_ones_are_kept(tmp_path: Path) -> None:
    config = parse_config(BASE)
    old = builtins(load_plugins(config))
    new = builtins(load_plugins(config, previous=old))
    kept = {type(plugin).__name__ for plugin in new if any(plugin is before for before in old)}
    assert kept == {"EventWebhooks", "SenderPolicy"}
    assert len(new) == len(old)
