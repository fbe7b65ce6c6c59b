"""The example plugins in plugins/, loaded the way a user loads them.

Through `plugins.paths` + `plugins.enable` (with mailgate.testing, and once
in a real `twistd mailgate`), and through an entry point in the `mailgate`
group of an installed distribution.
"""

from __future__ import annotations

import json
import smtplib
import textwrap
from pathlib import Path
from typing import Any, Callable

import pytest

from mailgate.config import ConfigError
from mailgate.builtin import load_plugins
from mailgate.testing import as_config, converse, route_message
from tests.support.gateway import wait_for

PLUGINS_DIR = Path(__file__).resolve().parents[2] / "plugins"
RULES = [
    {"match": r"^support\+.*@example\.test$", "route": "smtp:127.0.0.1:2626"},
    {"match": r"@spam\.test$", "route": "reject:550 5.7.1 no"},
]


def user_config(*enable: str, **sections: Any) -> dict[str, Any]:
    return {"domains": {"local": ["example.test"]},
            "plugins": {"paths": [str(PLUGINS_DIR)], "enable": list(enable)}, **sections}


def test_address_router_routes_by_pattern_and_leaves_the_rest_alone() -> None:
    config = user_config("address_router", plugin={"address_router": {"rules": RULES}})
    result = route_message([], config, "a@remote.test",
                           ["support+billing@example.test", "x@spam.test", "nobody@example.test"])
    assert result.routes == {"support+billing@example.test": "smtp:127.0.0.1:2626"}
    assert result.replies["x@spam.test"] == "550 5.7.1 no"
    assert result.replies["nobody@example.test"].startswith("550 5.1.1")  # the built-ins decided


def test_address_router_without_rules_routes_nothing() -> None:
    result = route_message([], user_config("address_router"), "", ["support+x@example.test"])
    assert result.refused["support+x@example.test"].code == 550


def test_address_router_names_a_bad_rule() -> None:
    rules = [RULES[0], {"match": "(unclosed", "route": "discard"}, {"route": "discard"}]
    with pytest.raises(ConfigError) as caught:
        route_message([], user_config("address_router", plugin={"address_router": {"rules": rules}}))
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "plugin.address_router.rules[1]", "plugin.address_router.rules[2]"
    ]


def test_spool_gateway_writes_message_and_envelope(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    config = user_config("spool_gateway", relay={"transport": {"archive.test": f"spool:{spool}"}})
    result = route_message([], config, "a@remote.test", ["x@archive.test", "y@archive.test"],
                           message="Subject: keep\n\nme\n", deliver=True)
    assert result.attempt(f"spool:{spool}").delivered
    [eml] = spool.glob("*.eml")
    assert eml.read_bytes() == b"Subject: keep\r\n\r\nme\r\n"
    assert json.loads(eml.with_suffix(".json").read_text()) == {
        "mail_from": "a@remote.test", "rcpt_to": ["x@archive.test", "y@archive.test"], "route": f"spool:{spool}",
    }
    assert sorted(p.name for p in spool.iterdir()) == [eml.name, eml.stem + ".json"]  # no temporaries left


def test_spool_gateway_write_failure_is_temporary(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    config = user_config("spool_gateway", relay={"transport": {"archive.test": f"spool:{blocker}/sub"}})
    result = route_message([], config, "", ["x@archive.test"], deliver=True)
    assert result.deliveries[0].error.code == 451


def test_all_three_together_with_the_router_feeding_the_spool(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    config = user_config(
        "blackhole", "address_router", "spool_gateway",
        plugin={"blackhole": {"domains": ["devnull.test"]},
                "address_router": {"rules": [{"match": "^archive@", "route": f"spool:{spool}"}]}},
    )
    result = route_message([], config, "a@remote.test", ["gone@devnull.test", "archive@example.test"],
                           deliver=True)
    assert result.routes == {"gone@devnull.test": "discard", "archive@example.test": f"spool:{spool}"}
    assert [a.route for a in result.deliveries] == [f"spool:{spool}"]
    assert len(list(spool.glob("*.eml"))) == 1


def test_a_plugin_installed_as_an_entry_point_loads_without_enable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installed distribution whose entry_points.txt names a module in the group `mailgate`."""
    dist_info = tmp_path / "mailgate_spool_example-0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: mailgate-spool-example\nVersion: 0\n")
    (dist_info / "entry_points.txt").write_text("[mailgate]\nspool = spool_gateway\n")
    monkeypatch.syspath_prepend(str(PLUGINS_DIR))
    monkeypatch.syspath_prepend(str(tmp_path))

    spool = tmp_path / "spool"
    config = {"relay": {"transport": {"archive.test": f"spool:{spool}"}}}  # plugins.enable is empty
    assert load_plugins(as_config(config)).get_plugin("spool").__name__ == "spool_gateway"
    result = route_message([], config, "a@remote.test", ["x@archive.test"], deliver=True)
    assert result.attempt(f"spool:{spool}").delivered
    assert len(list(spool.glob("*.eml"))) == 1


def test_a_real_gateway_loads_the_examples_from_plugins_paths(
    make_gateway: Callable[..., Any], tmp_path: Path
) -> None:
    """twistd mailgate: the router sends support+ mail to the spool and rejects spam.test."""
    spool = tmp_path / "spool"
    gateway = make_gateway(extra=textwrap.dedent(f"""\
        [plugins]
        paths = [{json.dumps(str(PLUGINS_DIR))}]
        enable = ["address_router", "spool_gateway"]
        [plugin.address_router]
        rules = [
          {{match = '^support\\+.*@example\\.test$', route = {json.dumps(f"spool:{spool}")}}},
          {{match = '@spam\\.test$', route = "reject:550 5.7.1 no"}},
        ]
    """))
    gateway.start()
    with smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=30) as client:
        client.sendmail("a@remote.test", ["support+42@example.test"], "Subject: help\r\n\r\nplease\r\n")
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            client.sendmail("a@remote.test", ["x@spam.test"], "Subject: spam\r\n\r\n")
    assert refused.value.recipients["x@spam.test"] == (550, b"5.7.1 no")
    [eml] = wait_for(lambda: list(spool.glob("*.eml")), 20, "the spooled message")
    assert eml.read_bytes().endswith(b"Subject: help\r\n\r\nplease\r\n")
    assert json.loads(eml.with_suffix(".json").read_text())["rcpt_to"] == ["support+42@example.test"]


# --- the examples in docs/plugins.md work as printed ------------------------------

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


def guide_block(after_heading: str, language: str, index: int = 0) -> str:
    """The index-th fenced block of `language` in the section under `after_heading`."""
    section = GUIDE.read_text().split(after_heading, 1)[1].split("\n## ", 1)[0]
    return section.split(f"```{language}\n")[index + 1].split("```", 1)[0]


def test_the_twenty_line_plugin_of_the_guide_works_as_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tomllib

    source = guide_block("## A plugin in twenty lines", "python")
    assert len(source.strip().splitlines()) <= 30
    (tmp_path / "acme.py").write_text(source)
    config = tomllib.loads(guide_block("## A plugin in twenty lines", "toml"))
    config["plugins"]["paths"] = [str(tmp_path)]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "var").mkdir()
    result = route_message([], config, "a@remote.test",
                           ["x@spam.test", "boss@example.test", "log+7@example.test"], deliver=True)
    assert result.replies["x@spam.test"] == "550 5.7.1 We do not take mail for that domain"
    assert result.routes == {"boss@example.test": "smtp:127.0.0.1:2626", "log+7@example.test": "acme:log"}
    assert result.attempt("acme:log").delivered
    assert (tmp_path / "var" / "acme.log").read_bytes().startswith(b"From: ")


def test_the_testing_example_of_the_guide_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "acme.py").write_text(guide_block("## A plugin in twenty lines", "python"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "acme", raising=False)
    namespace: dict[str, Any] = {}
    exec(guide_block("## Testing a plugin", "python"), namespace)
    namespace["test_acme_routes_and_delivers"](tmp_path)


def test_header_router_reroutes_a_message_by_a_header_field() -> None:
    """Routing by content: the recipients were accepted at RCPT, a header picks their route."""
    rules = [{"header": "X-Ticket-Queue", "match": "^support$", "route": "crm:support"}]
    smtp = converse([], user_config("header_router", plugin={"header_router": {"rules": rules}},
                                    relay={"transport": {"inbox.test": "crm:default"}}))
    smtp.send("EHLO client.test")
    for queue in ("support", "sales"):
        replies = smtp.send(f"MAIL FROM:<a@remote.test>\r\nRCPT TO:<desk@inbox.test>\r\nDATA\r\n"
                            f"X-Ticket-Queue: {queue}\r\nSubject: help\r\n\r\nhi\r\n.\r\n".encode())
        assert replies[-1].startswith("250 2.0.0")
    assert [routes for _, routes in smtp.queued] == [{"desk@inbox.test": "crm:support"},
                                                      {"desk@inbox.test": "crm:default"}]


def test_header_router_names_a_bad_header_rule() -> None:
    rules = [{"header": "Subject", "match": "(unclosed", "route": "discard"}, {"match": "x", "route": "discard"}]
    with pytest.raises(ConfigError) as caught:
        converse([], user_config("header_router", plugin={"header_router": {"rules": rules}}))
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "plugin.header_router.rules[0]", "plugin.header_router.rules[1]"]
