"""Reading the configuration: TOML keys, their checkers, and the dataclasses they build."""

from __future__ import annotations

import copy
import os
import tomllib
import urllib.parse
from types import MappingProxyType
from typing import Any, Iterator, Mapping

from mailgate.config.checks import (
    Checker,
    Invalid,
    Key,
    address,
    boolean,
    choice,
    ciphers,
    command,
    destination_name,
    directory_name,
    domain,
    endpoint,
    host_port,
    integer,
    ip_address,
    list_of,
    mapping_of,
    module_name,
    nameserver,
    network,
    number,
    parse_duration,
    parse_size,
    pattern,
    pipe_name,
    port,
    positive,
    route,
    secrets,
    sni_name,
    string,
    table_of,
    text,
    url,
)
from mailgate.config.mailauth_keys import AUTHENTICATION_KEYS, DKIM_KEYS, SRS_KEYS
from mailgate.config.model import (
    EVENT_TYPES,
    ConfigError,
    ServerConfig,
    StateConfig,
    ListenConfig,
    TLSConfig,
    SNICertificate,
    SecurityConfig,
    DomainsConfig,
    StoreConfig,
    UsersConfig,
    ForwardRule,
    MailingList,
    RelayConfig,
    PoolConfig,
    DestinationConfig,
    WebhookConfig,
    EventWebhookConfig,
    RspamdConfig,
    DKIMConfig,
    AuthenticationConfig,
    SRSConfig,
    PipeConfig,
    SenderRate,
    LimitsConfig,
    MetricsConfig,
    LogConfig,
    PluginsConfig,
    GatewayConfig,
)


def load_config(path: str) -> GatewayConfig:
    """Read and validate a TOML file; raise ConfigError listing every problem."""
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as error:
        raise ConfigError([f"{path}: cannot read: {error.strerror or error}"], source=path) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError([f"{path}: not valid TOML: {error}"], source=path) from None
    return parse_config(data, source=path)


def parse_config(data: Mapping[str, Any], source: str = "<string>") -> GatewayConfig:
    """Validate an already-parsed TOML document; raise ConfigError listing every problem.

    Nothing stops at the first mistake, so one run of check-config shows them
    all, in the order the file has them.
    """
    check = table_of(GatewayConfig, _document_schema(data), lambda values: {**values, "source": source})
    try:
        return check(data)
    except Invalid as error:
        raise ConfigError([f"{where.lstrip('.')}: {message}" for where, message in error.problems],
                          source=source) from None


# --- Checkers that build this module's dataclasses ----------------------------

_RATE_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
# Submission is for authenticated clients (RFC 6409); POP3 always authenticates.
_DEFAULT_AUTH = {"smtp": "optional", "submission": "required", "pop3": "none"}


def _sender_rate(value: Any) -> SenderRate | None:
    """"100/hour" or "100/10m"; "" or "off" turns the limit off."""
    rate = string(value).strip().lower()
    if rate in ("", "off"):
        return None
    count, _, period = rate.partition("/")
    try:
        seconds = _RATE_UNITS.get(period.strip().removesuffix("s")) or parse_duration(period)
        messages = int(count)
    except ValueError:
        seconds = messages = 0
    if messages <= 0 or seconds <= 0:
        raise ValueError(f'expected "COUNT/UNIT" like "100/hour" or "100/10m", or "off", got {value!r}')
    return SenderRate(messages, float(seconds))


def _workers(value: Any) -> int:
    """A count of processes, or "auto": one per CPU."""
    if value == "auto":
        return os.cpu_count() or 1
    return _positive_int(value)


def _state_backend(value: Any) -> str:
    """"memory", or "redis://HOST:PORT/DB" (port and database optional)."""
    backend = string(value).strip()
    if backend == "memory":
        return backend
    parsed = urllib.parse.urlsplit(backend)
    try:
        parsed.port
        database = int(parsed.path.strip("/") or "0")
    except ValueError:
        database = -1
    if parsed.scheme != "redis" or not parsed.hostname or database < 0 or parsed.query:
        raise ValueError(f'expected "memory" or "redis://HOST:PORT/DB", got {value!r}')
    return backend


def _relay_rules(values: dict) -> dict:
    """AUTH goes to a smarthost, with its password, and never in plain text."""
    problems = []
    if values.get("smarthost_username"):
        if not values.get("smarthost"):
            problems.append((".smarthost_username", "needs relay.smarthost: AUTH is only sent to a smarthost"))
        if not values.get("smarthost_password_file"):
            problems.append((".smarthost_password_file", "needed with relay.smarthost_username"))
        if values.get("smarthost_tls") == "none":
            problems.append((".smarthost_tls", '"none" with relay.smarthost_username would send the password '
                                               'in plain text: use "starttls" or "implicit"'))
    if problems:
        raise Invalid(problems)
    return values
def _sni(value: Any) -> Mapping[str, SNICertificate]:
    return MappingProxyType(dict(_SNI_TABLES(value)))


def _pipes(value: Any) -> Mapping[str, PipeConfig]:
    tables = _PIPE_TABLES(value)
    return MappingProxyType({name: PipeConfig(name, **table) for name, table in tables.items()})


def _default_auth(values: dict) -> dict:
    return {"auth": _DEFAULT_AUTH[values["protocol"]], **values}


def _lists(value: Any) -> Mapping[str, MailingList]:
    tables = _LIST_TABLES(value)
    return MappingProxyType({name: MailingList(name, **table) for name, table in tables.items()})


# --- Schemas: TOML key -> checker (and field, where the name differs) ----------

_duration, _size, _positive_int = positive(parse_duration), positive(parse_size), positive(integer)
_POLICY = choice("off", "authenticated", "all")
_LISTEN = {
    "name": Key(text, required=True),
    "protocol": Key(choice(*_DEFAULT_AUTH), required=True),
    "endpoint": Key(endpoint, required=True),
    "tls": Key(choice("none", "starttls", "implicit")),
    "auth": Key(choice("none", "optional", "required")),
    "proxy": Key(list_of(network)),
}
_FORWARD = {
    "match": Key(pattern, required=True),
    "to": Key(list_of(address, non_empty=True), required=True),
    "keep": Key(boolean),
}
_LIST = {
    "members": Key(list_of(address), required=True),
    "post": Key(choice("anyone", "members", "authenticated")),
}
_LIST_TABLES = mapping_of(address, table_of(dict, _LIST))
_POOL = {
    "name": Key(text, required=True),
    "addresses": Key(list_of(ip_address, non_empty=True), required=True),
    "helo": Key(domain),
    "senders": Key(list_of(pattern)),
}
_DESTINATION = {
    "concurrency": Key(_positive_int),
    "rate": Key(_sender_rate),
}
_DESTINATIONS = mapping_of(destination_name, table_of(DestinationConfig, _DESTINATION))
_SNI_TABLES = mapping_of(sni_name, table_of(SNICertificate, {"certificate": Key(text, required=True),
                                                             "key": Key(text, required=True)}))
_RELAY = {
    "allowed_networks": Key(list_of(network)),
    "smarthost": Key(lambda value: string(value) and host_port(value)),  # "" means "use MX"
    "port": Key(port),
    "nameservers": Key(list_of(nameserver)),
    "retry_intervals": Key(list_of(_duration, non_empty=True), "retry_intervals_seconds"),
    "max_queue_time": Key(_duration, "max_queue_seconds"),
    "delay_warning": Key(parse_duration, "delay_warning_seconds"),  # "0s" turns it off
    "connection_cache_time": Key(parse_duration, "connection_cache_seconds"),  # "0s" turns it off
    "tls": Key(choice("none", "opportunistic", "verify")),
    "mta_sts": Key(boolean),
    "mta_sts_ca_file": Key(string),
    "mta_sts_port": Key(port),
    "dane": Key(boolean),
    "smarthost_username": Key(string),
    "smarthost_password_file": Key(string),
    "smarthost_tls": Key(choice("starttls", "implicit", "none")),
    "pool": Key(list_of(table_of(PoolConfig, _POOL), unique="name")),
    "destination": Key(_DESTINATIONS),
}
_WEBHOOK = {
    "name": Key(text, required=True),
    "match": Key(list_of(pattern)),
    "url": Key(url, required=True),
    "secret": Key(secrets, "secrets"),
    "format": Key(choice("json", "raw")),
    "mode": Key(choice("queued", "sync")),
    "timeout": Key(_duration, "timeout_seconds"),
}
_EVENT_WEBHOOK = {
    "name": Key(directory_name, required=True),
    "url": Key(url, required=True),
    "secret": Key(secrets, "secrets"),
    "events": Key(list_of(choice(*EVENT_TYPES), non_empty=True)),
    "timeout": Key(_duration, "timeout_seconds"),
}
_RSPAMD = {
    "url": Key(lambda value: string(value) and url(value)),  # "" means "no scanning"
    "reject_score": Key(number),
    "header_score": Key(number),
    "timeout": Key(_duration, "timeout_seconds"),
}
_PIPE = {
    "command": Key(command, required=True),
    "timeout": Key(_duration, "timeout_seconds"),
}
_PIPE_TABLES = mapping_of(pipe_name, table_of(dict, _PIPE))
_LIMITS = {
    "max_message_size": Key(_size),
    "max_recipients": Key(_positive_int),
    "max_connections_per_ip": Key(_positive_int),
    "command_timeout": Key(_duration, "command_timeout_seconds"),
    "sender_rate": Key(_sender_rate),
    "data_timeout": Key(_duration, "data_timeout_seconds"),
    "max_bad_commands": Key(_positive_int),
    "connection_rate": Key(_sender_rate),
    "max_connections": Key(lambda value: None if value == "auto" else _positive_int(value)),
    "auth_failures_per_account": Key(_positive_int),
    "auth_failures_per_ip": Key(_positive_int),
    "auth_penalty": Key(_duration, "auth_penalty_seconds"),
}
_SECURITY = {
    "plaintext_auth": Key(choice("tls", "always")),
    "vrfy": Key(_POLICY),
    "expn": Key(_POLICY),
    "bare_newline": Key(choice("reject", "normalize")),
    "sender_login": Key(choice("owned", "any")),
    "dsn": Key(choice("all", "submission")),
}


def _metrics_endpoint(value: Any) -> str:
    """`metrics.endpoint`: "" is off; a bare tcp:PORT binds loopback, since the page has no login."""
    if not string(value):
        return value
    kind, _, options = endpoint(value).partition(":")
    if kind not in ("tcp", "tcp6") or "interface=" in options:
        return value
    return value + (":interface=127.0.0.1" if kind == "tcp" else r":interface=\:\:1")


_METRICS = {
    "endpoint": Key(_metrics_endpoint),
    "destinations": Key(_positive_int),
}
_LOG = {"format": Key(choice("text", "json")), "twisted_noise": Key(boolean)}
_PLUGINS = {"paths": Key(list_of(text)), "enable": Key(list_of(module_name)),
            "timeout": Key(_duration, "timeout_seconds")}
_DOCUMENT = {
    "server": Key(table_of(ServerConfig, {"hostname": Key(domain), "state_dir": Key(text), "workers": Key(_workers)})),
    "listen": Key(list_of(table_of(ListenConfig, _LISTEN, _default_auth), True, "name"), required=True),
    "tls": Key(table_of(TLSConfig, {"certificate": Key(text), "key": Key(text), "ciphers": Key(ciphers),
                                    "sni": Key(_sni)})),
    "security": Key(table_of(SecurityConfig, _SECURITY)),
    "domains": Key(table_of(DomainsConfig, {"local": Key(list_of(domain))})),
    "store": Key(table_of(StoreConfig, {"maildir_root": Key(text)})),
    "users": Key(table_of(UsersConfig, {"file": Key(text)})),
    "forward": Key(list_of(table_of(ForwardRule, _FORWARD))),
    "lists": Key(_lists),
    "webhook": Key(list_of(table_of(WebhookConfig, _WEBHOOK), unique="name")),
    "event_webhook": Key(list_of(table_of(EventWebhookConfig, _EVENT_WEBHOOK), unique="name")),
    "rspamd": Key(table_of(RspamdConfig, _RSPAMD)),
    "dkim": Key(table_of(DKIMConfig, DKIM_KEYS)),
    "authentication": Key(table_of(AuthenticationConfig, AUTHENTICATION_KEYS)),
    "srs": Key(table_of(SRSConfig, SRS_KEYS)),
    "pipe": Key(_pipes),
    "limits": Key(table_of(LimitsConfig, _LIMITS)),
    "metrics": Key(table_of(MetricsConfig, _METRICS)),
    "log": Key(table_of(LogConfig, _LOG)),
    "plugins": Key(table_of(PluginsConfig, _PLUGINS)),
    "state": Key(table_of(StateConfig, {"backend": Key(_state_backend),
                                        "fallback_time": Key(_duration, "fallback_seconds")})),
    # [plugin.NAME] belongs to the plugin: only its shape is checked here.
    "plugin": Key(mapping_of(string, mapping_of(string, copy.deepcopy))),
}


def _document_schema(data: Mapping[str, Any]) -> dict[str, Key]:
    """The whole file; webhook: and pipe: routes in relay.transport must name a
    [[webhook]] or [pipe.NAME] it defines."""
    webhooks, pipes = data.get("webhook"), data.get("pipe")
    names = {table["name"] for table in (webhooks if isinstance(webhooks, list) else [])
             if isinstance(table, Mapping) and isinstance(table.get("name"), str)}
    pipe_names = set(pipes) if isinstance(pipes, Mapping) else set()
    relay = {**_RELAY, "transport": Key(mapping_of(domain, route(names, pipe_names)))}
    return {**_DOCUMENT, "relay": Key(table_of(RelayConfig, relay, _relay_rules))}


# --- Every accepted key, for the reference (tests/test_docs.py) --------------

# Checkers that wrap a mapping_of to build dataclasses, and the mapping they wrap.
_WRAPPED: dict[Checker, Checker] = {_lists: _LIST_TABLES, _pipes: _PIPE_TABLES, _sni: _SNI_TABLES}
_PLACEHOLDERS = {address: "ADDRESS", domain: "DOMAIN", destination_name: "DOMAIN", sni_name: "DOMAIN"}  # a name checked otherwise: NAME


def known_keys() -> list[str]:
    """Every key the configuration accepts, as docs/configuration.md spells it.

    `limits.max_message_size` for a key of a table, `listen[].endpoint` for
    one in an array of tables, `pipe.NAME.command` and `lists.ADDRESS.members`
    in tables the operator names, `relay.transport.DOMAIN` and `plugin.NAME`
    where the operator chooses the keys. Walked from the schemas above, so a
    key added there is listed here.
    """
    return list(_paths(table_of(dict, _document_schema({})), ""))


def _paths(check: Any, path: str) -> Iterator[str]:
    check = _WRAPPED.get(check, check)
    if hasattr(check, "schema"):  # table_of: its keys
        for key, spec in check.schema.items():
            yield from _paths(spec.check, f"{path}.{key}" if path else key)
    elif hasattr(getattr(check, "item", None), "schema"):  # list_of tables
        yield from _paths(check.item, f"{path}[]")
    elif hasattr(check, "value"):  # mapping_of: keys the operator names
        named = f"{path}.{_PLACEHOLDERS.get(check.key, 'NAME')}"
        if hasattr(check.value, "schema"):
            yield from _paths(check.value, named)
        else:
            yield named
    else:
        yield path
