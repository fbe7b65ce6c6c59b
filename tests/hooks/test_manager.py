"""Tests for mailgate.hooks.manager: loading plugins and calling hooks that may be async."""

from __future__ import annotations

import itertools
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator

import pytest
from pluggy import PluginManager
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mailgate import hookimpl, hookspecs
from mailgate.builtin import load_plugins
from mailgate.config import ConfigError, GatewayConfig, parse_config
from mailgate.core.session import Envelope
from mailgate.hooks.calling import Hooks

LISTEN = [{"name": "mx", "protocol": "smtp", "endpoint": "tcp:2525:interface=127.0.0.1"}]
_names = itertools.count()
PLUGIN_PREFIX = "mailgate_test_plugin_"


def manager_with(*plugins: object) -> PluginManager:
    manager = PluginManager("mailgate")
    manager.add_hookspecs(hookspecs)
    for plugin in plugins:
        manager.register(plugin)
    return manager


def result_of(coroutine: Any) -> Any:
    """The result of a coroutine that must finish without the reactor."""
    return SynchronousTestCase().successResultOf(Deferred.fromCoroutine(coroutine))


class Route:
    def __init__(self, answer: Any, log: list[str], name: str) -> None:
        self.answer, self.log, self.name = answer, log, name

    @hookimpl
    def mailgate_route(self, recipient: str, envelope: Envelope) -> Any:
        self.log.append(self.name)
        return self.answer


class Verify:
    def __init__(self, answer: Any) -> None:
        self.answer = answer

    @hookimpl
    def mailgate_verify(self, address: str) -> Any:
        return self.answer


async def coroutine_answer(value: Any) -> Any:
    return value


def test_plain_values_deferreds_and_coroutines_are_all_answers() -> None:
    for answer in ("plain", succeed("deferred"), coroutine_answer("coroutine")):
        hooks = Hooks(manager_with(Verify(answer)), Clock())
        assert result_of(hooks.first("mailgate_verify", address="a@b.test")) in ("plain", "deferred", "coroutine")


def test_first_answer_asks_later_registrations_first_and_stops() -> None:
    log: list[str] = []
    manager = manager_with(Route("builtin", log, "first"), Route("user", log, "second"))
    assert result_of(Hooks(manager, Clock()).first("mailgate_route", recipient="a@b.test", envelope=Envelope())) == "user"
    assert log == ["second"]


def test_first_answer_skips_none_and_awaits_coroutines() -> None:
    """A coroutine answering None must not win just because it is not None itself."""
    log: list[str] = []
    manager = manager_with(
        Route("local", log, "builtin"),
        Route(coroutine_answer(None), log, "async-none"),
        Route(None, log, "sync-none"),
    )
    answer = Hooks(manager, Clock()).first("mailgate_route", recipient="a@b.test", envelope=Envelope())
    assert result_of(answer) == "local"
    assert log == ["sync-none", "async-none", "builtin"]


def test_first_answer_awaits_a_deferred_answer() -> None:
    log: list[str] = []
    pending: Deferred[str] = Deferred()
    manager = manager_with(Route("builtin", log, "builtin"), Route(pending, log, "user"))
    d = Deferred.fromCoroutine(Hooks(manager, Clock()).first("mailgate_route", recipient="a@b.test", envelope=Envelope()))
    case = SynchronousTestCase()
    case.assertNoResult(d)
    assert log == ["user"]
    pending.callback("smtp:127.0.0.1:25")
    assert case.successResultOf(d) == "smtp:127.0.0.1:25"
    assert log == ["user"]


def test_first_answer_with_a_deferred_none_goes_on() -> None:
    log: list[str] = []
    manager = manager_with(Route("builtin", log, "builtin"), Route(succeed(None), log, "user"))
    assert result_of(Hooks(manager, Clock()).first("mailgate_route", recipient="a@b.test", envelope=Envelope())) == "builtin"


def test_first_answer_false_is_an_answer() -> None:
    manager = manager_with(Verify(True), Verify(False))
    assert result_of(Hooks(manager, Clock()).first("mailgate_verify", address="a@b.test")) is False


def test_first_answer_none_when_nobody_answers() -> None:
    manager = manager_with(Verify(None), Verify(coroutine_answer(None)))
    assert result_of(Hooks(manager, Clock()).first("mailgate_verify", address="a@b.test")) is None


def test_first_answer_passes_only_the_arguments_an_implementation_names() -> None:
    seen: list[str] = []

    class RecipientOnly:
        @hookimpl
        def mailgate_route(self, recipient: str) -> str:
            seen.append(recipient)
            return "local"

    manager = manager_with(RecipientOnly())
    assert result_of(Hooks(manager, Clock()).first("mailgate_route", recipient="x@y.test", envelope=Envelope())) == "local"
    assert seen == ["x@y.test"]


def test_first_answer_propagates_exceptions_when_asked_to() -> None:
    """mailgate.testing's setting; the server's is tests/hooks/test_calling.py's HookFailed."""
    class Broken:
        @hookimpl
        def mailgate_verify(self, address: str) -> None:
            raise RuntimeError("boom")

    manager = manager_with(Verify(True), Broken())
    d = Deferred.fromCoroutine(Hooks(manager, Clock(), propagate_errors=True).first("mailgate_verify", address="a@b.test"))
    SynchronousTestCase().failureResultOf(d, RuntimeError)


def test_call_all_collects_every_answer_awaited() -> None:
    seen: list[str] = []

    class Configure:
        def __init__(self, name: str, answer: Any) -> None:
            self.name, self.answer = name, answer

        @hookimpl
        def mailgate_configure(self, config: GatewayConfig) -> Any:
            seen.append(self.name)
            return self.answer

    manager = manager_with(
        Configure("one", 1), Configure("two", succeed(2)), Configure("three", coroutine_answer(3))
    )
    results = result_of(Hooks(manager, Clock()).each("mailgate_configure", config=GatewayConfig(), reactor=Clock()))
    assert results == [3, 2, 1]
    assert seen == ["three", "two", "one"]


# --- build_plugin_manager ----------------------------------------------------


@pytest.fixture
def isolated_imports(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """build_plugin_manager puts plugins.paths on sys.path; undo it after each test."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    for name in [n for n in sys.modules if n.startswith(PLUGIN_PREFIX)]:
        del sys.modules[name]


def write_plugin(directory: Path, source: str) -> str:
    """A uniquely named plugin module in `directory`; returns the module name."""
    name = f"{PLUGIN_PREFIX}{next(_names)}"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.py").write_text(textwrap.dedent(source))
    return name


def config_with(paths: list[str], enable: list[str], **more: Any) -> GatewayConfig:
    return parse_config({"listen": LISTEN, "plugins": {"paths": paths, "enable": enable}, **more})


ROUTE_PLUGIN = """\
    from mailgate import hookimpl

    @hookimpl
    def mailgate_route(recipient, envelope):
        return "discard" if recipient.endswith("@sink.test") else None
"""


def test_enabled_module_is_loaded_and_asked_before_builtins(tmp_path: Path, isolated_imports: None) -> None:
    name = write_plugin(tmp_path / "plugins", ROUTE_PLUGIN)
    config = config_with([str(tmp_path / "plugins")], [name], domains={"local": ["sink.test"]})
    manager = load_plugins(config)
    manager.hook.mailgate_configure(config=config, reactor=Clock())
    assert manager.get_plugin(name) is not None
    route = Hooks(manager, Clock()).first("mailgate_route", recipient="x@sink.test", envelope=Envelope())
    assert result_of(route) == "discard"  # the built-ins would have said 550 for a local domain
    other = Hooks(manager, Clock()).first("mailgate_route", recipient="x@remote.test", envelope=Envelope())
    assert result_of(other) == "reject:554 5.7.1 Relay access denied"


def test_builtins_registered_without_user_plugins(isolated_imports: None) -> None:
    config = config_with([], [])
    manager = load_plugins(config)
    names = {manager.get_name(p) for p in manager.get_plugins()}
    assert {"builtin.RelayPolicy", "builtin.LocalMailboxes", "builtin.TransportTable"} <= names


def test_extra_plugins_are_asked_first(tmp_path: Path, isolated_imports: None) -> None:
    name = write_plugin(tmp_path, ROUTE_PLUGIN)
    log: list[str] = []
    manager = load_plugins(config_with([str(tmp_path)], [name]), extra=[Route("local", log, "extra")])
    route = Hooks(manager, Clock()).first("mailgate_route", recipient="x@sink.test", envelope=Envelope())
    assert result_of(route) == "local"
    assert log == ["extra"]


def test_unknown_module_names_its_index(tmp_path: Path, isolated_imports: None) -> None:
    good = write_plugin(tmp_path, ROUTE_PLUGIN)
    with pytest.raises(ConfigError) as caught:
        load_plugins(config_with([str(tmp_path)], ["no_such_mailgate_plugin", good, "nor_this_one"]))
    assert len(caught.value.problems) == 2
    assert caught.value.problems[0].startswith("plugins.enable[0]: cannot import 'no_such_mailgate_plugin'")
    assert caught.value.problems[1].startswith("plugins.enable[2]: ")


def test_module_failing_at_import_is_a_config_error(tmp_path: Path, isolated_imports: None) -> None:
    name = write_plugin(tmp_path, "raise RuntimeError('plugin is broken')\n")
    with pytest.raises(ConfigError, match=r"plugins\.enable\[0\].*plugin is broken"):
        load_plugins(config_with([str(tmp_path)], [name]))


def test_misspelt_hook_name_fails_at_start_up(tmp_path: Path, isolated_imports: None) -> None:
    name = write_plugin(tmp_path, """\
        from mailgate import hookimpl

        @hookimpl
        def mailgate_rout(recipient, envelope):
            return "local"
    """)
    with pytest.raises(ConfigError, match="mailgate_rout") as caught:
        load_plugins(config_with([str(tmp_path)], [name]))
    assert caught.value.problems[0].startswith("plugins.enable")


def test_misspelt_hook_argument_is_a_config_error(tmp_path: Path, isolated_imports: None) -> None:
    name = write_plugin(tmp_path, """\
        from mailgate import hookimpl

        @hookimpl
        def mailgate_route(recipient, envelop):
            return "local"
    """)
    with pytest.raises(ConfigError) as caught:
        load_plugins(config_with([str(tmp_path)], [name]))
    [problem] = caught.value.problems
    assert problem.startswith("plugins.enable[0]: ")
    assert "envelop" in problem
    assert "\n" not in problem


def test_module_enabled_twice_is_a_config_error(tmp_path: Path, isolated_imports: None) -> None:
    name = write_plugin(tmp_path, ROUTE_PLUGIN)
    with pytest.raises(ConfigError, match=r"plugins\.enable\[1\]"):
        load_plugins(config_with([str(tmp_path)], [name, name]))


def test_plugin_reads_its_own_table_on_configure(tmp_path: Path, isolated_imports: None) -> None:
    name = write_plugin(tmp_path, """\
        from mailgate import hookimpl

        settings = {}

        @hookimpl
        def mailgate_configure(config):
            settings.update(config.plugin.get("mine", {}))
    """)
    config = config_with([str(tmp_path)], [name], plugin={"mine": {"greeting": "hello"}})
    manager = load_plugins(config)
    result_of(Hooks(manager, Clock()).each("mailgate_configure", config=config, reactor=Clock()))
    assert sys.modules[name].settings == {"greeting": "hello"}
