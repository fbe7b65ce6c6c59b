"""The configuration: etc/mailgate.toml turned into frozen, validated dataclasses."""

from __future__ import annotations

import base64
import binascii
import copy
import ipaddress
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from fractions import Fraction
from types import MappingProxyType
from typing import Any, Callable, Collection, Mapping
from urllib.parse import urlsplit

from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    """The configuration is unusable; `problems` holds one line per bad key."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.source = source  # the file, when known, for a heading above the problems


@dataclass(frozen=True)
class ServerConfig:
    hostname: str = "localhost"
    state_dir: str = "var"


@dataclass(frozen=True)
class ListenConfig:
    name: str
    protocol: str  # smtp | submission | pop3
    endpoint: str  # a Twisted server endpoint string
    tls: str = "none"  # none | starttls | implicit
    auth: str = "optional"  # none | optional | required; submission defaults to required


@dataclass(frozen=True)
class TLSConfig:
    certificate: str = "var/tls/cert.pem"
    key: str = "var/tls/key.pem"


@dataclass(frozen=True)
class SecurityConfig:
    plaintext_auth: str = "tls"  # tls | always
    vrfy: str = "authenticated"  # off | authenticated | all
    expn: str = "authenticated"  # off | authenticated | all
    bare_newline: str = "reject"  # reject | normalize (SMTP smuggling defence)
    sender_login: str = "owned"  # owned | any: envelope senders an authenticated user may use


@dataclass(frozen=True)
class DomainsConfig:
    local: tuple[str, ...] = ()  # lower-cased


@dataclass(frozen=True)
class StoreConfig:
    maildir_root: str = "var/mail"


@dataclass(frozen=True)
class UsersConfig:
    file: str = "etc/users"


@dataclass(frozen=True)
class ForwardRule:
    match: str  # an address or "*@domain", lower-cased
    to: tuple[str, ...]
    keep: bool = False


@dataclass(frozen=True)
class MailingList:
    address: str  # lower-cased
    members: tuple[str, ...]
    post: str = "anyone"  # anyone | members | authenticated


@dataclass(frozen=True)
class RelayConfig:
    allowed_networks: tuple[Network, ...] = ()
    smarthost: str = ""  # "host:port" or ""
    port: int = 25
    nameservers: tuple[str, ...] = ()  # "host:port" or "host"
    retry_intervals_seconds: tuple[float, ...] = (60, 300, 900, 1800, 3600, 7200, 14400)
    max_queue_seconds: float = 5 * 86400
    tls: str = "opportunistic"  # none | opportunistic | verify
    transport: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class WebhookConfig:
    name: str
    match: tuple[str, ...]
    url: str
    secrets: tuple[str, ...] = ()  # `secret` as a list; several sign during rotation
    format: str = "json"  # json | raw
    mode: str = "queued"  # queued | sync
    timeout_seconds: float = 10.0


@dataclass(frozen=True)
class PipeConfig:
    name: str
    command: tuple[str, ...]  # argv, run without a shell; the message on stdin
    timeout_seconds: float = 60.0


@dataclass(frozen=True)
class SenderRate:
    messages: int
    per_seconds: float


@dataclass(frozen=True)
class LimitsConfig:
    max_message_size: int = 25_000_000
    max_recipients: int = 100
    max_connections_per_ip: int = 20
    command_timeout_seconds: float = 300.0
    sender_rate: SenderRate | None = SenderRate(100, 3600.0)
    data_timeout_seconds: float = 1800.0  # the whole DATA phase, however the bytes trickle
    max_bad_commands: int = 20  # then 421 and close, as Postfix's smtpd_hard_error_limit
    connection_rate: SenderRate | None = SenderRate(120, 60.0)  # new connections per client IP


@dataclass(frozen=True)
class PluginsConfig:
    paths: tuple[str, ...] = ("plugins",)
    enable: tuple[str, ...] = ()


@dataclass(frozen=True)
class GatewayConfig:
    server: ServerConfig = ServerConfig()
    listen: tuple[ListenConfig, ...] = ()
    tls: TLSConfig = TLSConfig()
    security: SecurityConfig = SecurityConfig()
    domains: DomainsConfig = DomainsConfig()
    store: StoreConfig = StoreConfig()
    users: UsersConfig = UsersConfig()
    forward: tuple[ForwardRule, ...] = ()
    lists: Mapping[str, MailingList] = field(default_factory=lambda: MappingProxyType({}))
    relay: RelayConfig = RelayConfig()
    webhook: tuple[WebhookConfig, ...] = ()
    pipe: Mapping[str, PipeConfig] = field(default_factory=lambda: MappingProxyType({}))
    limits: LimitsConfig = LimitsConfig()
    plugins: PluginsConfig = PluginsConfig()
    plugin: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: MappingProxyType({}))
    source: str = "<defaults>"  # the file it was read from, for messages


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
    check = _table_of(GatewayConfig, _document_schema(data), lambda values: {**values, "source": source})
    try:
        return check(data)
    except _Invalid as error:
        raise ConfigError([f"{where.lstrip('.')}: {message}" for where, message in error.problems],
                          source=source) from None


def parse_duration(text: str | int | float) -> float:
    """"30s", "5m", "2h", "5d" (or a bare number of seconds) -> seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if not math.isfinite(text) or text < 0:
            raise ValueError(f"not a duration: {text!r}")
        return float(text)
    match = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f'not a duration (like "30s", "5m", "2h", "5d"): {text!r}')
    return float(match[1]) * _SECONDS[match[2].lower()]


def parse_size(text: str | int) -> int:
    """"512KB", "25MB", "1MiB" (KB/MB powers of 1000, KiB/MiB of 1024), or bytes -> bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"not a size: {text!r}")
        return text
    match = _SIZE.fullmatch(text.strip()) if isinstance(text, str) else None
    size = Fraction(match[1]) * _BYTES[(match[2] or "").lower()] if match else None
    if size is None or size.denominator != 1:
        raise ValueError(f'not a size (like "512KB", "25MB", "1MiB" or bytes): {text!r}')
    return int(size)


# --- Checkers ----------------------------------------------------------------
#
# A checker takes a raw TOML value and returns the converted one, or raises
# ValueError. Containers raise _Invalid, carrying every problem inside them
# under its sub-path ("[1].endpoint"), so paths compose as tables nest.

Checker = Callable[[Any], Any]
_DOMAIN = re.compile(r"(?:[\w-]+\.)*[\w-]+")
_ADDRESS = re.compile(r"[^\s@<>()\[\],;:\"\\]+@" + _DOMAIN.pattern)
_HOST_PORT = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[\w.-]+):(\d{1,5})")
_MODULE = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")
_REJECT = re.compile(r"[45]\d\d(?: .*)?")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)", re.IGNORECASE)
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|kib|mib|gib)?", re.IGNORECASE)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_BYTES = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3}
_RATE_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
# Submission is for authenticated clients (RFC 6409); POP3 always authenticates.
_DEFAULT_AUTH = {"smtp": "optional", "submission": "required", "pop3": "none"}
_ROUTES = "local, local:ADDRESS, mx, smtp:HOST:PORT, webhook:NAME, reject:CODE TEXT, discard or SCHEME:ARGS"


class _Invalid(ValueError):
    """Problems inside one value, each as (sub-path, message)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__(problems)
        self.problems = problems


def _located(prefix: str, error: ValueError) -> list[tuple[str, str]]:
    if isinstance(error, _Invalid):
        return [(prefix + where, message) for where, message in error.problems]
    return [(prefix, str(error))]


def _dot(key: str) -> str:
    """".key" the way TOML spells it, quoting keys like addresses."""
    return "." + (key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key))


_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array"}


def _kind(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a table"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


@dataclass(frozen=True)
class _Key:
    """How one TOML key is checked, and the dataclass field (if named otherwise) it fills."""

    check: Checker
    field: str | None = None
    required: bool = False


def _table_of(build: Callable[..., Any], schema: Mapping[str, _Key],
              prepare: Callable[[dict], dict] = dict) -> Checker:
    """A table whose keys are all in `schema`, built into a dataclass."""
    def check(value: Any) -> Any:
        if not isinstance(value, Mapping):
            raise ValueError(f"expected a table, got {_kind(value)}")
        values, problems = {}, []
        for key, item in value.items():
            if key not in schema:
                problems.append((_dot(key), "unknown key"))
                continue
            try:
                values[schema[key].field or key] = schema[key].check(item)
            except ValueError as error:
                problems += _located(_dot(key), error)
        problems += [(_dot(key), "missing") for key in schema if schema[key].required and key not in value]
        if problems:
            raise _Invalid(problems)
        return build(**prepare(values))
    return check


def _list_of(check: Checker, non_empty: bool = False, unique: str | None = None) -> Checker:
    """An array whose items all pass `check`; items' attribute `unique` must differ."""
    def check_all(value: Any) -> tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"expected an array, got {_kind(value)}")
        if non_empty and not value:
            raise ValueError("must not be empty")
        items, seen, problems = [], set(), []
        for i, item in enumerate(value):
            try:
                items.append(check(item))
            except ValueError as error:
                problems += _located(f"[{i}]", error)
                continue
            name = getattr(items[-1], unique) if unique else i
            if name in seen:
                problems.append((f"[{i}].{unique}", f"duplicate {unique} {name!r}"))
            seen.add(name)
        if problems:
            raise _Invalid(problems)
        return tuple(items)
    return check_all


def _mapping_of(check_key: Checker, check_value: Checker) -> Checker:
    """A table of checked keys and values, frozen; keys equal once checked clash."""
    def check_all(value: Any) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise ValueError(f"expected a table, got {_kind(value)}")
        items, problems = {}, []
        for key, item in value.items():
            try:
                name, checked = check_key(key), check_value(item)
            except ValueError as error:
                problems += _located(_dot(key), error)
                continue
            if name in items:
                problems.append((_dot(key), "duplicate key (ignoring case)"))
            items[name] = checked
        if problems:
            raise _Invalid(problems)
        return MappingProxyType(items)
    return check_all


def _typed(*types: type) -> Checker:
    def check(value: Any) -> Any:
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            raise ValueError(f"expected {' or '.join(_TYPE_NAMES[t] for t in types)}, got {_kind(value)}")
        return value
    return check


_string, _boolean, _integer, _text_or_number = _typed(str), _typed(bool), _typed(int), _typed(str, int, float)


def _text(value: Any) -> str:
    if not _string(value).strip():
        raise ValueError("must not be empty")
    return value


def _matching(pattern: re.Pattern, what: str, convert: Callable[[str], str] = str) -> Checker:
    def check(value: Any) -> str:
        if not pattern.fullmatch(_string(value)):
            raise ValueError(f"not {what}: {value!r}")
        return convert(value)
    return check


_domain = _matching(_DOMAIN, "a domain name", str.lower)
_address = _matching(_ADDRESS, "an address (local@domain)", str.lower)
_module_name = _matching(_MODULE, "a module name")
_pipe_name = _matching(re.compile(r"[\w.-]+"), "a pipe name (letters, digits, _ . -)")


def _pattern(value: Any) -> str:
    """An address, or "*@domain" for a whole domain."""
    return "*@" + _domain(value[2:]) if _string(value).startswith("*@") else _address(value)


def _choice(*options: str) -> Checker:
    def check(value: Any) -> str:
        if _string(value) not in options:
            raise ValueError(f"expected one of {' | '.join(options)}, got {value!r}")
        return value
    return check


def _positive(parse: Callable[[Any], float]) -> Checker:
    """Zero is never meant: a zero timeout or limit would refuse everything."""
    def check(value: Any) -> Any:
        result = parse(_text_or_number(value))
        if result <= 0:
            raise ValueError(f"must be positive, got {value!r}")
        return result
    return check


def _port(value: Any) -> int:
    if not 0 < _integer(value) < 65536:
        raise ValueError(f"not a port number: {value}")
    return value


def _host_port(value: Any) -> str:
    """"host:port", IPv6 as "[::1]:port"; kept as written."""
    match = _HOST_PORT.fullmatch(_string(value))
    if not match or not 0 < int(match[1]) < 65536:
        raise ValueError(f"expected host:port, got {value!r}")
    return value


def _nameserver(value: Any) -> str:
    """"host:port", or a bare host or IPv6 address meaning port 53."""
    text = _string(value)
    if text.count(":") > 1 and not text.startswith("["):
        text = f"[{text}]"
    if not _HOST_PORT.fullmatch(text + ":53"):
        _host_port(text)
    return value


def _endpoint(value: Any) -> str:
    """A Twisted server endpoint string; parsing on a MemoryReactor binds nothing."""
    try:
        serverFromString(MemoryReactor(), _string(value))
    except Exception as error:
        raise ValueError(f"not a server endpoint ({error}): {value!r}") from None
    return value


def _network(value: Any) -> Network:
    try:
        return ipaddress.ip_network(_string(value), strict=False)
    except ValueError:
        raise ValueError(f"not a network (CIDR): {value!r}") from None


def _url(value: Any) -> str:
    parts = urlsplit(_string(value))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value


def _secret(value: Any) -> str:
    """whsec_ secrets are base64 (Standard Webhooks): catch a bad paste at start-up."""
    if _text(value).startswith("whsec_"):
        try:
            base64.b64decode(value[6:], validate=True)
        except binascii.Error:
            raise ValueError("a whsec_ secret must be base64 after the prefix") from None
    return value


def _secrets(value: Any) -> tuple[str, ...]:
    return _list_of(_secret, non_empty=True)(value) if isinstance(value, list) else (_secret(value),)


def _sender_rate(value: Any) -> SenderRate | None:
    """"100/hour" or "100/10m"; "" or "off" turns the limit off."""
    text = _string(value).strip().lower()
    if text in ("", "off"):
        return None
    count, _, period = text.partition("/")
    try:
        seconds = _RATE_UNITS.get(period.strip().removesuffix("s")) or parse_duration(period)
        messages = int(count)
    except ValueError:
        seconds = messages = 0
    if messages <= 0 or seconds <= 0:
        raise ValueError(f'expected "COUNT/UNIT" like "100/hour" or "100/10m", or "off", got {value!r}')
    return SenderRate(messages, float(seconds))


def _route(webhooks: Collection[str], pipes: Collection[str] = ()) -> Checker:
    """Route strings, shared by relay.transport and mailgate_route (SPEC)."""
    def check(value: Any) -> str:
        scheme, colon, args = _string(value).partition(":")
        if scheme in ("local", "mx", "discard") and not colon:
            return value
        if not colon or not _SCHEME.fullmatch(scheme) or scheme in ("mx", "discard"):
            raise ValueError(f"not a route ({_ROUTES}): {value!r}")
        if scheme == "local":
            _address(args)
        elif scheme == "smtp":
            _host_port(args)
        elif scheme == "webhook" and args not in webhooks:
            raise ValueError(f"no [[webhook]] is named {args!r}")
        elif scheme == "pipe" and args not in pipes:
            raise ValueError(f"no [pipe.NAME] table is named {args!r}")
        elif scheme == "reject" and not _REJECT.fullmatch(args):
            raise ValueError(f'expected "reject:CODE TEXT" with a 4xx or 5xx code, got {value!r}')
        return value
    return check


def _command(value: Any) -> tuple[str, ...]:
    """An argv list: a program, then its arguments, each passed as it is (no shell)."""
    argv = _list_of(_string, non_empty=True)(value)
    if not argv[0].strip():
        raise ValueError("the program (the first item) must not be empty")
    return argv


def _pipes(value: Any) -> Mapping[str, PipeConfig]:
    tables = _mapping_of(_pipe_name, _table_of(dict, _PIPE))(value)
    return MappingProxyType({name: PipeConfig(name, **table) for name, table in tables.items()})


def _default_auth(values: dict) -> dict:
    return {"auth": _DEFAULT_AUTH[values["protocol"]], **values}


def _lists(value: Any) -> Mapping[str, MailingList]:
    tables = _mapping_of(_address, _table_of(dict, _LIST))(value)
    return MappingProxyType({address: MailingList(address, **table) for address, table in tables.items()})


# --- Schemas: TOML key -> checker (and field, where the name differs) ----------

_duration, _size, _positive_int = _positive(parse_duration), _positive(parse_size), _positive(_integer)
_POLICY = _choice("off", "authenticated", "all")
_LISTEN = {
    "name": _Key(_text, required=True),
    "protocol": _Key(_choice(*_DEFAULT_AUTH), required=True),
    "endpoint": _Key(_endpoint, required=True),
    "tls": _Key(_choice("none", "starttls", "implicit")),
    "auth": _Key(_choice("none", "optional", "required")),
}
_FORWARD = {
    "match": _Key(_pattern, required=True),
    "to": _Key(_list_of(_address, non_empty=True), required=True),
    "keep": _Key(_boolean),
}
_LIST = {
    "members": _Key(_list_of(_address), required=True),
    "post": _Key(_choice("anyone", "members", "authenticated")),
}
_RELAY = {
    "allowed_networks": _Key(_list_of(_network)),
    "smarthost": _Key(lambda value: _string(value) and _host_port(value)),  # "" means "use MX"
    "port": _Key(_port),
    "nameservers": _Key(_list_of(_nameserver)),
    "retry_intervals": _Key(_list_of(_duration, non_empty=True), "retry_intervals_seconds"),
    "max_queue_time": _Key(_duration, "max_queue_seconds"),
    "tls": _Key(_choice("none", "opportunistic", "verify")),
}
_WEBHOOK = {
    "name": _Key(_text, required=True),
    "match": _Key(_list_of(_pattern, non_empty=True), required=True),
    "url": _Key(_url, required=True),
    "secret": _Key(_secrets, "secrets"),
    "format": _Key(_choice("json", "raw")),
    "mode": _Key(_choice("queued", "sync")),
    "timeout": _Key(_duration, "timeout_seconds"),
}
_PIPE = {
    "command": _Key(_command, required=True),
    "timeout": _Key(_duration, "timeout_seconds"),
}
_LIMITS = {
    "max_message_size": _Key(_size),
    "max_recipients": _Key(_positive_int),
    "max_connections_per_ip": _Key(_positive_int),
    "command_timeout": _Key(_duration, "command_timeout_seconds"),
    "sender_rate": _Key(_sender_rate),
    "data_timeout": _Key(_duration, "data_timeout_seconds"),
    "max_bad_commands": _Key(_positive_int),
    "connection_rate": _Key(_sender_rate),
}
_SECURITY = {
    "plaintext_auth": _Key(_choice("tls", "always")),
    "vrfy": _Key(_POLICY),
    "expn": _Key(_POLICY),
    "bare_newline": _Key(_choice("reject", "normalize")),
    "sender_login": _Key(_choice("owned", "any")),
}
_PLUGINS = {"paths": _Key(_list_of(_text)), "enable": _Key(_list_of(_module_name))}
_DOCUMENT = {
    "server": _Key(_table_of(ServerConfig, {"hostname": _Key(_domain), "state_dir": _Key(_text)})),
    "listen": _Key(_list_of(_table_of(ListenConfig, _LISTEN, _default_auth), True, "name"), required=True),
    "tls": _Key(_table_of(TLSConfig, {"certificate": _Key(_text), "key": _Key(_text)})),
    "security": _Key(_table_of(SecurityConfig, _SECURITY)),
    "domains": _Key(_table_of(DomainsConfig, {"local": _Key(_list_of(_domain))})),
    "store": _Key(_table_of(StoreConfig, {"maildir_root": _Key(_text)})),
    "users": _Key(_table_of(UsersConfig, {"file": _Key(_text)})),
    "forward": _Key(_list_of(_table_of(ForwardRule, _FORWARD))),
    "lists": _Key(_lists),
    "webhook": _Key(_list_of(_table_of(WebhookConfig, _WEBHOOK), unique="name")),
    "pipe": _Key(_pipes),
    "limits": _Key(_table_of(LimitsConfig, _LIMITS)),
    "plugins": _Key(_table_of(PluginsConfig, _PLUGINS)),
    # [plugin.NAME] belongs to the plugin: only its shape is checked here.
    "plugin": _Key(_mapping_of(_string, _mapping_of(_string, copy.deepcopy))),
}


def _document_schema(data: Mapping[str, Any]) -> dict[str, _Key]:
    """The whole file; webhook: and pipe: routes in relay.transport must name a
    [[webhook]] or [pipe.NAME] it defines."""
    webhooks = data.get("webhook") if isinstance(data.get("webhook"), list) else []
    names = {table.get("name") for table in webhooks if isinstance(table, Mapping)}
    pipes = data.get("pipe") if isinstance(data.get("pipe"), Mapping) else {}
    relay = {**_RELAY, "transport": _Key(_mapping_of(_domain, _route(names, set(pipes))))}
    return {**_DOCUMENT, "relay": _Key(_table_of(RelayConfig, relay))}
