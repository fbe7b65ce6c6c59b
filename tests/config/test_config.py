"""Tests for mailgate.config: the default file, every kind of problem, and the value parsers."""

from __future__ import annotations

import copy
import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from mailgate.config import (
    EVENT_TYPES,
    AuthenticationConfig,
    DKIMConfig,
    SRSConfig,
    ConfigError,
    GatewayConfig,
    LimitsConfig,
    PluginsConfig,
    RelayConfig,
    DestinationConfig,
    RspamdConfig,
    SecurityConfig,
    SenderRate,
    load_config,
    parse_config,
)
from mailgate.config.checks import parse_duration, parse_size

DEFAULT_FILE = Path(__file__).resolve().parents[2] / "etc" / "mailgate.toml"
MINIMAL: dict[str, Any] = {
    "listen": [{"name": "mx", "protocol": "smtp", "endpoint": "tcp:2525:interface=127.0.0.1"}],
}


def with_sections(**sections: Any) -> dict[str, Any]:
    """MINIMAL with some top-level sections added or replaced."""
    return {**copy.deepcopy(MINIMAL), **sections}


def problems_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, source="test.toml")
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


def uncommented_default() -> str:
    """The default file with every commented-out option and example table switched on."""
    text = DEFAULT_FILE.read_text()
    return re.sub(r'(?m)^# (?=\[[^\]]*\]\]?\s*$|[\w"][\w".@-]* = )', "", text)


# --- The default file ----------------------------------------------------------


def test_default_file_parses_to_loopback_listeners() -> None:
    config = load_config(str(DEFAULT_FILE))
    assert config.source == str(DEFAULT_FILE)
    assert config.server.hostname == "localhost"
    assert config.domains.local == ("example.test",)
    assert config.relay.allowed_networks == ()
    listeners = {listener.name: listener for listener in config.listen}
    assert {name: (l.protocol, l.tls, l.auth) for name, l in listeners.items()} == {
        "mx": ("smtp", "starttls", "optional"),
        "submission": ("submission", "starttls", "required"),
        "smtps": ("submission", "implicit", "required"),
        "pop3": ("pop3", "starttls", "none"),
        "pop3s": ("pop3", "implicit", "none"),
    }
    ports = sorted(int(l.endpoint.split(":")[1]) for l in config.listen)
    assert ports == [1100, 2525, 4650, 5870, 9950]
    assert all(l.endpoint.endswith(":interface=127.0.0.1") for l in config.listen)


def test_default_file_activates_no_forward_list_or_webhook() -> None:
    config = load_config(str(DEFAULT_FILE))
    assert (config.forward, dict(config.lists), config.webhook) == ((), {}, ())
    assert dict(config.relay.transport) == {} and dict(config.plugin) == {}
    assert (config.event_webhook, config.rspamd.url) == ((), "")


def test_default_file_documents_every_option() -> None:
    text = DEFAULT_FILE.read_text()
    options = [
        "hostname", "state_dir", "name", "protocol", "endpoint", "auth", "certificate", "key",
        "plaintext_auth", "vrfy", "expn", "bare_newline", "local", "maildir_root", "file",
        "match", "to", "keep", "members", "post", "allowed_networks", "smarthost", "port",
        "nameservers", "retry_intervals", "max_queue_time", "url", "secret", "format", "mode",
        "timeout", "max_message_size", "max_recipients", "max_connections_per_ip",
        "command_timeout", "sender_rate", "paths", "enable", "events", "reject_score", "header_score",
    ]
    missing = [o for o in options if not re.search(rf"(?m)^(# )?{o} = .*#", text)]
    assert missing == []
    for table in ("[[forward]]", "[lists.", "[relay.transport]", "[[webhook]]", "[[event_webhook]]", "[plugin."):
        assert f"# {table}" in text


def test_commented_examples_in_default_file_are_valid() -> None:
    config = parse_config(tomllib.loads(uncommented_default()))
    assert config.forward[0].to == ("alice@example.test", "someone@remote.test")
    assert config.lists["team@example.test"].post == "anyone"
    assert config.webhook[0].name == "tickets"
    assert config.event_webhook[0].name == "crm"
    assert config.relay.transport["legacy.test"] == "smtp:127.0.0.1:2626"
    assert config.plugin["example"]["greeting"] == "hello"


def test_commented_defaults_in_default_file_are_the_real_defaults() -> None:
    config = parse_config(tomllib.loads(uncommented_default()))
    assert config.security == SecurityConfig()
    assert config.limits == LimitsConfig()
    assert config.plugins == PluginsConfig()
    assert config.rspamd == RspamdConfig()
    assert config.authentication == AuthenticationConfig()
    assert config.srs == SRSConfig()
    assert config.dkim == DKIMConfig(headers=config.dkim.headers)  # headers: an example, not the long default
    assert config.event_webhook[0].events == EVENT_TYPES
    relay = RelayConfig(transport=config.relay.transport, pool=config.relay.pool,
                        destination=config.relay.destination)
    assert config.relay == relay
    assert config.relay.destination["*"] == DestinationConfig()  # the "*" example shows the defaults
    assert config.relay.pool[0].helo == "news-mta.example.test"


# --- Reading files --------------------------------------------------------------


def test_missing_file_is_one_line_naming_it(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith(f"{path}: ")


def test_toml_syntax_error_is_one_line_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[server\nhostname = 1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith(f"{path}: not valid TOML")


def test_problems_from_a_file_name_their_keys(tmp_path: Path) -> None:
    path = tmp_path / "mailgate.toml"
    path.write_text('[[listen]]\nname = "a"\nprotocol = "smtp"\nendpoint = "nonsense:1"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert caught.value.source == str(path)
    assert [p.split(":")[0] for p in caught.value.problems] == ["listen[0].endpoint"]


# --- Problems and their key paths -----------------------------------------------

LISTEN_OK = {"name": "b", "protocol": "smtp", "endpoint": "tcp:25"}
WEBHOOK_OK = {"name": "hook", "match": ["*@hooks.test"], "url": "http://127.0.0.1:8080/"}
EVENTS_OK = {"name": "crm", "url": "http://127.0.0.1:8080/events"}


@pytest.mark.parametrize("sections, path", [
    ({"listen": [LISTEN_OK, {**LISTEN_OK, "name": "c", "endpoint": "tcp:notaport"}]}, "listen[1].endpoint"),
    ({"listen": [{**LISTEN_OK, "endpoint": "tcp:25:bogus=1"}]}, "listen[0].endpoint"),
    ({"listen": [{**LISTEN_OK, "endpoint": 25}]}, "listen[0].endpoint"),
    ({"listen": [{**LISTEN_OK, "protocol": "imap"}]}, "listen[0].protocol"),
    ({"listen": [{**LISTEN_OK, "tls": "ssl"}]}, "listen[0].tls"),
    ({"listen": [{**LISTEN_OK, "auth": "maybe"}]}, "listen[0].auth"),
    ({"listen": [{"name": "x", "protocol": "smtp"}]}, "listen[0].endpoint"),
    ({"listen": [LISTEN_OK, LISTEN_OK]}, "listen[1].name"),
    ({"listen": []}, "listen"),
    ({"listen": {"name": "x"}}, "listen"),
    ({"server": {"hostnme": "x"}}, "server.hostnme"),
    ({"server": {"hostname": "not a host"}}, "server.hostname"),
    ({"server": "mail.example.test"}, "server"),
    ({"tls": {"certificate": ""}}, "tls.certificate"),
    ({"tls": {"ciphers": "modern-ish"}}, "tls.ciphers"),
    ({"tls": {"ciphers": ""}}, "tls.ciphers"),
    ({"security": {"plaintext_auth": "never"}}, "security.plaintext_auth"),
    ({"security": {"vrfy": "on"}}, "security.vrfy"),
    ({"security": {"expn": True}}, "security.expn"),
    ({"security": {"bare_newline": "allow"}}, "security.bare_newline"),
    ({"domains": {"local": ["ok.test", "bad domain"]}}, "domains.local[1]"),
    ({"domains": {"local": "example.test"}}, "domains.local"),
    ({"store": {"maildir_root": 5}}, "store.maildir_root"),
    ({"users": {"file": ["etc/users"]}}, "users.file"),
    ({"forward": [{"match": "nobody", "to": ["a@b.test"]}]}, "forward[0].match"),
    ({"forward": [{"match": "*@b.test", "to": ["a@b.test", "c"]}]}, "forward[0].to[1]"),
    ({"forward": [{"match": "*@b.test", "to": []}]}, "forward[0].to"),
    ({"forward": [{"match": "*@b.test", "to": ["a@b.test"], "keep": "yes"}]}, "forward[0].keep"),
    ({"lists": {"team@example.test": {"members": ["alice"]}}}, 'lists."team@example.test".members[0]'),
    ({"lists": {"team@example.test": {"members": "a@b.test"}}}, 'lists."team@example.test".members'),
    ({"lists": {"team@example.test": {"members": [], "post": "all"}}}, 'lists."team@example.test".post'),
    ({"lists": {"team": {"members": []}}}, "lists.team"),
    ({"lists": {"T@x.test": {"members": []}, "t@x.test": {"members": []}}}, 'lists."t@x.test"'),
    ({"relay": {"allowed_networks": ["10.0.0.0/8", "10.0.0.300/32"]}}, "relay.allowed_networks[1]"),
    ({"relay": {"smarthost": "smtp.example.test"}}, "relay.smarthost"),
    ({"relay": {"smarthost": "smtp.example.test:99999"}}, "relay.smarthost"),
    ({"relay": {"port": 0}}, "relay.port"),
    ({"relay": {"port": "25"}}, "relay.port"),
    ({"relay": {"nameservers": ["127.0.0.1:53", "dns host"]}}, "relay.nameservers[1]"),
    ({"relay": {"retry_intervals": ["1m", "soon"]}}, "relay.retry_intervals[1]"),
    ({"relay": {"retry_intervals": []}}, "relay.retry_intervals"),
    ({"relay": {"max_queue_time": "0s"}}, "relay.max_queue_time"),
    ({"relay": {"tls": "required"}}, "relay.tls"),
    ({"relay": {"transport": {"legacy.test": "smtp:127.0.0.1"}}}, 'relay.transport."legacy.test"'),
    ({"relay": {"transport": {"a.test": "webhook:nobody"}}}, 'relay.transport."a.test"'),
    ({"relay": {"transport": {"a.test": "reject:hello"}}}, 'relay.transport."a.test"'),
    ({"relay": {"transport": {"a.test": "mx:now"}}}, 'relay.transport."a.test"'),
    ({"relay": {"transport": {"a.test": "local:nobody"}}}, 'relay.transport."a.test"'),
    ({"relay": {"transport": {"a.test": "elsewhere"}}}, 'relay.transport."a.test"'),
    ({"relay": {"transport": {"bad domain": "mx"}}}, 'relay.transport."bad domain"'),
    ({"webhook": [{**WEBHOOK_OK, "secret": 42}]}, "webhook[0].secret"),
    ({"webhook": [{**WEBHOOK_OK, "secret": ["ok", ""]}]}, "webhook[0].secret[1]"),
    ({"webhook": [{**WEBHOOK_OK, "secret": "whsec_!!notbase64!!"}]}, "webhook[0].secret"),
    ({"webhook": [{**WEBHOOK_OK, "format": "xml"}]}, "webhook[0].format"),
    ({"webhook": [{**WEBHOOK_OK, "mode": "async"}]}, "webhook[0].mode"),
    ({"webhook": [{**WEBHOOK_OK, "url": "ftp://x.test/"}]}, "webhook[0].url"),
    ({"webhook": [{**WEBHOOK_OK, "timeout": "forever"}]}, "webhook[0].timeout"),
    ({"webhook": [{**WEBHOOK_OK, "match": ["support"]}]}, "webhook[0].match[0]"),
    ({"webhook": [WEBHOOK_OK, WEBHOOK_OK]}, "webhook[1].name"),
    ({"event_webhook": [{"name": "crm"}]}, "event_webhook[0].url"),
    ({"event_webhook": [{**EVENTS_OK, "name": "../crm"}]}, "event_webhook[0].name"),
    ({"event_webhook": [{**EVENTS_OK, "name": ".hidden"}]}, "event_webhook[0].name"),
    ({"event_webhook": [{**EVENTS_OK, "events": ["delivered", "opened"]}]}, "event_webhook[0].events[1]"),
    ({"event_webhook": [{**EVENTS_OK, "events": []}]}, "event_webhook[0].events"),
    ({"event_webhook": [{**EVENTS_OK, "secret": "whsec_!!"}]}, "event_webhook[0].secret"),
    ({"event_webhook": [{**EVENTS_OK, "timeout": "0s"}]}, "event_webhook[0].timeout"),
    ({"event_webhook": [EVENTS_OK, EVENTS_OK]}, "event_webhook[1].name"),
    ({"rspamd": {"url": "127.0.0.1:11333"}}, "rspamd.url"),
    ({"rspamd": {"reject_score": "15"}}, "rspamd.reject_score"),
    ({"rspamd": {"header_score": True}}, "rspamd.header_score"),
    ({"rspamd": {"header_score": float("inf")}}, "rspamd.header_score"),
    ({"rspamd": {"timeout": "soon"}}, "rspamd.timeout"),
    ({"limits": {"max_message_size": "25 parsecs"}}, "limits.max_message_size"),
    ({"limits": {"max_message_size": 0}}, "limits.max_message_size"),
    ({"limits": {"max_recipients": 0}}, "limits.max_recipients"),
    ({"limits": {"max_recipients": 1.5}}, "limits.max_recipients"),
    ({"limits": {"max_connections_per_ip": -1}}, "limits.max_connections_per_ip"),
    ({"limits": {"max_connections_per_ip": True}}, "limits.max_connections_per_ip"),
    ({"limits": {"command_timeout": "5 minutes"}}, "limits.command_timeout"),
    ({"limits": {"sender_rate": "100/fortnight"}}, "limits.sender_rate"),
    ({"limits": {"sender_rate": "0/hour"}}, "limits.sender_rate"),
    ({"limits": {"sender_rate": "100"}}, "limits.sender_rate"),
    ({"dkim": {"sign": "always"}}, "dkim.sign"),
    ({"dkim": {"keys_dir": ""}}, "dkim.keys_dir"),
    ({"dkim": {"headers": ["subject", "received"]}}, "dkim.headers"),
    ({"dkim": {"headers": ["bad name"]}}, "dkim.headers[0]"),
    ({"authentication": {"checks": ["spf", "arc"]}}, "authentication.checks[1]"),
    ({"authentication": {"dns_timeout": "0s"}}, "authentication.dns_timeout"),
    ({"authentication": {"dmarc": "quarantine"}}, "authentication.dmarc"),
    ({"authentication": {"authserv_id": "not a host"}}, "authentication.authserv_id"),
    ({"srs": {"secret": "short"}}, "srs.secret"),
    ({"srs": {"domain": "bad domain"}}, "srs.domain"),
    ({"plugins": {"paths": "plugins"}}, "plugins.paths"),
    ({"plugins": {"enable": ["good", "not-a-module"]}}, "plugins.enable[1]"),
    ({"plugin": {"mine": "not a table"}}, "plugin.mine"),
    ({"pluginz": {}}, "pluginz"),
])


def test_each_problem_names_its_key(sections: dict[str, Any], path: str) -> None:
    problems = problems_of(with_sections(**sections))
    assert [p.partition(": ")[0] for p in problems] == [path]


def test_tls_ciphers_default_profile_and_cipher_strings() -> None:
    assert parse_config(MINIMAL).tls.ciphers == "intermediate"
    for value in ("legacy", "intermediate", "ECDHE+AESGCM:!aNULL"):
        assert parse_config(with_sections(tls={"ciphers": value})).tls.ciphers == value


def test_unknown_key_says_so() -> None:
    assert problems_of(with_sections(server={"hostnme": "x"})) == ["server.hostnme: unknown key"]


def test_missing_listen_is_a_problem() -> None:
    assert [p.partition(":")[0] for p in problems_of({})] == ["listen"]


def test_bad_enum_value_lists_the_choices() -> None:
    [problem] = problems_of(with_sections(relay={"tls": "always"}))
    assert problem == "relay.tls: expected one of none | opportunistic | verify, got 'always'"


def test_all_problems_are_reported_at_once_in_file_order() -> None:
    data = {
        "server": {"hostnme": "x"},
        "listen": [LISTEN_OK, {**LISTEN_OK, "name": "c", "endpoint": "bogus:1", "tls": "tls"}],
        "limits": {"max_message_size": "huge", "max_recipients": 0},
        "webhook": [{**WEBHOOK_OK, "secret": 1}],
        "lists": {"team@example.test": {"members": ["nobody"]}},
    }
    assert [p.partition(": ")[0] for p in problems_of(data)] == [
        "server.hostnme",
        "listen[1].endpoint",
        "listen[1].tls",
        "limits.max_message_size",
        "limits.max_recipients",
        "webhook[0].secret",
        'lists."team@example.test".members[0]',
    ]


# --- Values and defaults ----------------------------------------------------------


def test_auth_defaults_follow_the_protocol() -> None:
    listen = [{"name": p, "protocol": p, "endpoint": "tcp:0"} for p in ("smtp", "submission", "pop3")]
    config = parse_config({"listen": listen})
    assert [l.auth for l in config.listen] == ["optional", "required", "none"]
    assert [l.tls for l in config.listen] == ["none", "none", "none"]


def test_explicit_auth_wins_over_the_protocol_default() -> None:
    config = parse_config({"listen": [{**LISTEN_OK, "protocol": "submission", "auth": "optional"}]})
    assert config.listen[0].auth == "optional"


def test_absent_sections_take_dataclass_defaults() -> None:
    config = parse_config(copy.deepcopy(MINIMAL), source="x.toml")
    assert config == GatewayConfig(listen=config.listen, source="x.toml")
    assert config.limits.sender_rate == SenderRate(100, 3600.0)


def test_domains_and_addresses_are_lower_cased() -> None:
    config = parse_config(with_sections(
        domains={"local": ["Example.TEST"]},
        forward=[{"match": "*@Old.Test", "to": ["Alice@Example.test"]}],
        lists={"Team@Example.Test": {"members": ["Bob@Example.Test"]}},
        relay={"transport": {"Legacy.Test": "local"}},
    ))
    assert config.domains.local == ("example.test",)
    assert (config.forward[0].match, config.forward[0].to) == ("*@old.test", ("alice@example.test",))
    assert config.lists["team@example.test"].address == "team@example.test"
    assert config.lists["team@example.test"].members == ("bob@example.test",)
    assert list(config.relay.transport) == ["legacy.test"]


def test_addresses_and_domains_follow_the_smtp_rule() -> None:
    """One rule everywhere: what SMTP refuses is refused here, and what SMTP
    rewrites ("x" is x) is rewritten the same way (issue #11)."""
    config = parse_config(with_sections(forward=[{"match": '"old"@example.test', "to": ['"x"@Example.test']}]))
    assert (config.forward[0].match, config.forward[0].to) == ("old@example.test", ("x@example.test",))
    problems = problems_of(with_sections(
        domains={"local": ["under_score.test"]},
        forward=[{"match": "a/b@example.test", "to": ["bob@example.test"]}],
    ))
    assert [problem.split(":")[0] for problem in problems] == ["domains.local[0]", "forward[0].match"]


def test_relay_values_are_converted() -> None:
    config = parse_config(with_sections(relay={
        "allowed_networks": ["192.168.1.7/24", "::1"],
        "smarthost": "[::1]:2525",
        "nameservers": ["127.0.0.1:5353", "::1", "dns.test"],
        "retry_intervals": ["30s", 90],
        "max_queue_time": "2h",
    }))
    relay = config.relay
    assert relay.allowed_networks == (ipaddress.ip_network("192.168.1.0/24"), ipaddress.ip_network("::1/128"))
    assert relay.smarthost == "[::1]:2525"
    assert relay.nameservers == ("127.0.0.1:5353", "::1", "dns.test")
    assert relay.retry_intervals_seconds == (30.0, 90.0)
    assert relay.max_queue_seconds == 7200.0


@pytest.mark.parametrize("route", [
    "local", "local:alice@example.test", "mx", "discard", "smtp:127.0.0.1:2626",
    "smtp:[::1]:25", "webhook:hook", "reject:550 5.7.1 not here", "reject:451", "s3:bucket/prefix",
])


def test_valid_routes_are_accepted(route: str) -> None:
    config = parse_config(with_sections(webhook=[WEBHOOK_OK], relay={"transport": {"a.test": route}}))
    assert config.relay.transport["a.test"] == route


def test_webhook_secret_may_be_a_string_or_a_list() -> None:
    config = parse_config(with_sections(webhook=[
        {**WEBHOOK_OK, "name": "one", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
        {**WEBHOOK_OK, "name": "two", "secret": ["new", "old"], "mode": "sync", "timeout": "3s"},
        {**WEBHOOK_OK, "name": "three"},
    ]))
    assert [w.secrets for w in config.webhook] == [
        ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",), ("new", "old"), ()]
    assert (config.webhook[1].mode, config.webhook[1].timeout_seconds) == ("sync", 3.0)


def test_event_webhooks_and_rspamd() -> None:
    config = parse_config(with_sections(
        event_webhook=[{**EVENTS_OK, "secret": ["new", "old"], "events": ["bounced"], "timeout": "3s"}],
        rspamd={"url": "http://127.0.0.1:11333", "reject_score": 20, "header_score": 4.5},
    ))
    [webhook] = config.event_webhook
    assert (webhook.secrets, webhook.events, webhook.timeout_seconds) == (("new", "old"), ("bounced",), 3.0)
    assert parse_config(with_sections(event_webhook=[EVENTS_OK])).event_webhook[0].events == EVENT_TYPES
    assert (config.rspamd.reject_score, config.rspamd.header_score, config.rspamd.timeout_seconds) == (20.0, 4.5, 5.0)
    assert parse_config(MINIMAL).rspamd == RspamdConfig()


@pytest.mark.parametrize("text, rate", [
    ("100/hour", SenderRate(100, 3600.0)),
    ("5/second", SenderRate(5, 1.0)),
    ("20/minute", SenderRate(20, 60.0)),
    ("1000/day", SenderRate(1000, 86400.0)),
    ("100/10m", SenderRate(100, 600.0)),
    ("100/hours", SenderRate(100, 3600.0)),
    ("", None),
    ("off", None),
])


def test_sender_rate(text: str, rate: SenderRate | None) -> None:
    config = parse_config(with_sections(limits={"sender_rate": text}))
    assert config.limits.sender_rate == rate


def test_plugin_tables_are_free_form_and_kept_raw() -> None:
    settings = {"anything": [1, {"nested": True}], "Odd-Key": "x"}
    data = with_sections(plugin={"spamcheck": settings, "empty": {}})
    config = parse_config(data)
    assert dict(config.plugin["spamcheck"]) == settings
    assert dict(config.plugin["empty"]) == {}
    settings["anything"].append(2)  # the config holds its own copy
    assert config.plugin["spamcheck"]["anything"] == [1, {"nested": True}]


def test_result_is_immutable() -> None:
    config = parse_config(with_sections(
        plugin={"p": {"k": 1}}, lists={"l@x.test": {"members": []}}, relay={"transport": {"a.test": "mx"}}))
    for mapping in (config.plugin, config.plugin["p"], config.lists, config.relay.transport):
        with pytest.raises(TypeError):
            mapping["new"] = "value"  # type: ignore[index]
    with pytest.raises(AttributeError):
        config.server.hostname = "x"  # type: ignore[misc]


# --- Durations and sizes ----------------------------------------------------------


@pytest.mark.parametrize("text, seconds", [
    ("30s", 30.0), ("5m", 300.0), ("2h", 7200.0), ("5d", 432000.0), ("1.5h", 5400.0),
    ("45", 45.0), (45, 45.0), (0.5, 0.5), (" 10s ", 10.0),
])


def test_parse_duration(text: str | int | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "5x", "5 minutes", "-5s", -1, True, None, "1h30m"])
def test_parse_duration_rejects(text: Any) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize("text, size", [
    ("512KB", 512_000), ("25MB", 25_000_000), ("2GB", 2_000_000_000), ("1KiB", 1024),
    ("1MiB", 1024**2), ("1GiB", 1024**3), ("0.5KB", 500), ("100", 100), (100, 100), ("25mb", 25_000_000),
])


def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MB", "25 parsecs", "1.5", "-1KB", -1, 2.5, False, "25TB"])
def test_parse_size_rejects(text: Any) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


# --- [pipe.NAME]: the program gateway ---------------------------------------------


def test_pipe_tables_become_pipe_configs() -> None:
    from mailgate.config import PipeConfig

    config = parse_config(with_sections(
        pipe={"crm": {"command": ["/usr/local/bin/crm", "--queue", "mail"], "timeout": "2m"},
              "true": {"command": ["true"]}},
        relay={"transport": {"legacy.test": "pipe:crm"}},
    ))
    assert config.pipe["crm"] == PipeConfig("crm", ("/usr/local/bin/crm", "--queue", "mail"), 120.0)
    assert config.pipe["true"].timeout_seconds == 60.0
    assert config.relay.transport["legacy.test"] == "pipe:crm"
    assert dict(parse_config(MINIMAL).pipe) == {}


def test_pipe_problems_name_their_keys() -> None:
    problems = problems_of(with_sections(pipe={
        "empty": {"command": []},
        "none": {"timeout": "5s"},
        "typed": {"command": ["/bin/prog", 7], "timeout": "soon", "user": "nobody"},
        "blank": {"command": [" ", "x"]},
        "bad name!": {"command": ["true"]},
    }))
    assert problems == [
        "pipe.empty.command: must not be empty",
        "pipe.none.command: missing",
        "pipe.typed.command[1]: expected a string, got an integer",
        'pipe.typed.timeout: not a duration (like "30s", "5m", "2h", "5d"): \'soon\'',
        "pipe.typed.user: unknown key",
        "pipe.blank.command: the program (the first item) must not be empty",
        "pipe.\"bad name!\": not a pipe name (letters, digits, _ . -): 'bad name!'",
    ]


def test_a_pipe_route_must_name_a_defined_pipe() -> None:
    problems = problems_of(with_sections(
        pipe={"crm": {"command": ["true"]}},
        relay={"transport": {"ok.test": "pipe:crm", "legacy.test": "pipe:nope"}},
    ))
    assert problems == ["relay.transport.\"legacy.test\": no [pipe.NAME] table is named 'nope'"]


def test_default_file_documents_the_pipe_example() -> None:
    text = DEFAULT_FILE.read_text()
    assert "# [pipe.crm]" in text and re.search(r"(?m)^# command = .*#", text)
    config = parse_config(tomllib.loads(uncommented_default()))
    assert config.pipe["crm"].command[0] == "/usr/local/bin/crm-import"
    assert config.pipe["crm"].timeout_seconds == 60.0
    assert config.relay.transport["crm.example.test"] == "pipe:crm"
    assert dict(load_config(str(DEFAULT_FILE)).pipe) == {}


def test_a_webhook_reached_only_by_routes_needs_no_match() -> None:
    config = parse_config(with_sections(
        webhook=[{"name": "tickets", "url": "http://127.0.0.1:8080/"}],
        relay={"transport": {"tickets.test": "webhook:tickets"}},
    ))
    assert config.webhook[0].match == () and config.relay.transport["tickets.test"] == "webhook:tickets"


# --- Outbound delivery for the open internet (0.2) ----------------------------------


def test_smarthost_auth_needs_a_smarthost_a_password_file_and_tls() -> None:
    assert problems_of(with_sections(relay={"smarthost_username": "u", "smarthost_tls": "none"})) == [
        "relay.smarthost_username: needs relay.smarthost: AUTH is only sent to a smarthost",
        "relay.smarthost_password_file: needed with relay.smarthost_username",
        'relay.smarthost_tls: "none" with relay.smarthost_username would send the password in plain text: '
        'use "starttls" or "implicit"',
    ]
    config = parse_config(with_sections(relay={"smarthost": "127.0.0.3:587", "smarthost_username": "u",
                                               "smarthost_password_file": "etc/pw", "smarthost_tls": "implicit"}))
    assert (config.relay.smarthost_username, config.relay.smarthost_tls) == ("u", "implicit")


def test_pools_and_destinations() -> None:
    config = parse_config(with_sections(relay={
        "pool": [{"name": "news", "addresses": ["127.0.0.10", "::1"], "helo": "News.Example.Test",
                  "senders": ["*@News.Example.Test"]}],
        "destination": {"*": {"concurrency": 5}, "Slow.Test": {"concurrency": 2, "rate": "30/minute"}},
    }))
    [pool] = config.relay.pool
    assert (pool.addresses, pool.helo, pool.senders) == (("127.0.0.10", "::1"), "news.example.test",
                                                         ("*@news.example.test",))
    assert config.relay.destination_for("slow.test").rate == SenderRate(30, 60.0)
    assert config.relay.destination_for("other.test").concurrency == 5
    assert problems_of(with_sections(relay={"pool": [{"name": "a", "addresses": ["nope"]}],
                                            "destination": {"*": {"concurrency": 0}}})) == [
        "relay.pool[0].addresses[0]: not an IP address: 'nope'",
        "relay.destination.\"*\".concurrency: must be positive, got 0",
    ]


def test_mail_authentication_values_are_converted() -> None:
    config = parse_config(with_sections(
        dkim={"headers": ["Subject", "TO", "subject"]},
        authentication={"checks": ["dkim", "spf", "dkim"], "dns_timeout": "2s", "authserv_id": "MX.Example.test"},
        srs={"secret": "s" * 16},
    ))
    assert config.dkim.headers == ("from", "subject", "to")  # From always, each once, lower-cased
    assert config.authentication == AuthenticationConfig(("dkim", "spf"), 2.0, "mx.example.test", "report")
    assert config.srs == SRSConfig("s" * 16, "")
    defaults = parse_config(MINIMAL)
    assert defaults.dkim.sign == "authenticated" and "from" in defaults.dkim.headers
    assert defaults.authentication.checks == ("spf", "dkim", "dmarc") and defaults.srs.secret == ""
@pytest.mark.parametrize(("given", "served"), [
    ("", ""),
    ("tcp:9025", "tcp:9025:interface=127.0.0.1"),
    ("tcp:port=9025", "tcp:port=9025:interface=127.0.0.1"),
    ("tcp6:9025", r"tcp6:9025:interface=\:\:1"),
    ("tcp:9025:interface=0.0.0.0", "tcp:9025:interface=0.0.0.0"),
    ("unix:/run/mailgate/metrics.sock", "unix:/run/mailgate/metrics.sock"),
    ("systemd:domain=INET:index=2", "systemd:domain=INET:index=2"),
])


def test_the_metrics_endpoint_is_loopback_unless_an_interface_is_named(given: str, served: str) -> None:
    """The status page has no login: `tcp:PORT` alone must not open it to every interface (issue #17)."""
    config = parse_config(with_sections(metrics={"endpoint": given}))
    assert config.metrics.endpoint == served
