"""Typed value checkers for the configuration: each returns the converted value or raises ValueError.

A checker takes a raw TOML value. Containers raise Invalid, carrying every
problem inside them under its sub-path ("[1].endpoint"), so paths compose
as tables nest.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import math
import re
import socket
import ssl
from dataclasses import dataclass
from fractions import Fraction
from types import MappingProxyType
from typing import Any, Callable, Collection, Mapping
from urllib.parse import urlsplit

from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor

from mailgate.core.addresses import AddressError, normalize_domain, normalize_mailbox
from mailgate.core.route import Route, RouteError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Checker = Callable[[Any], Any]
_HOST_PORT = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[\w.-]+):(\d{1,5})")
_MODULE = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)", re.IGNORECASE)
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|kib|mib|gib)?", re.IGNORECASE)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_BYTES = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def parse_duration(text: str | int | float) -> float:
    """"30s", "5m", "2h", "5d" (or a bare number of seconds) -> seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if not math.isfinite(text) or text < 0:
            raise ValueError(f"not a duration: {text!r}")
        return float(text)
    match = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f'not a duration (like "30s", "5m", "2h", "5d"): {text!r}')
    seconds = float(match[1]) * _SECONDS[match[2].lower()]
    if not math.isfinite(seconds):  # 400 digits overflow to inf: "never" is not a duration
        raise ValueError(f"duration too long: {text!r}")
    return seconds


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


class Invalid(ValueError):
    """Problems inside one value, each as (sub-path, message)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__(problems)
        self.problems = problems


def _located(prefix: str, error: ValueError) -> list[tuple[str, str]]:
    if isinstance(error, Invalid):
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
class Key:
    """How one TOML key is checked, and the dataclass field (if named otherwise) it fills."""

    check: Checker
    field: str | None = None
    required: bool = False


def table_of(build: Callable[..., Any], schema: Mapping[str, Key],
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
            raise Invalid(problems)
        return build(**prepare(values))
    check.schema = schema  # type: ignore[attr-defined]  # for schema.known_keys()
    return check


def list_of(check: Checker, non_empty: bool = False, unique: str | None = None) -> Checker:
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
            raise Invalid(problems)
        return tuple(items)
    check_all.item = check  # type: ignore[attr-defined]  # for schema.known_keys()
    return check_all


def mapping_of(check_key: Checker, check_value: Checker) -> Checker:
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
            raise Invalid(problems)
        return MappingProxyType(items)
    check_all.key = check_key  # type: ignore[attr-defined]  # for schema.known_keys()
    check_all.value = check_value  # type: ignore[attr-defined]
    return check_all


def _typed(*types: type) -> Checker:
    def check(value: Any) -> Any:
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            raise ValueError(f"expected {' or '.join(_TYPE_NAMES[t] for t in types)}, got {_kind(value)}")
        return value
    return check


string, boolean, integer, _text_or_number = _typed(str), _typed(bool), _typed(int), _typed(str, int, float)


def text(value: Any) -> str:
    if not string(value).strip():
        raise ValueError("must not be empty")
    return value


def _matching(regex: re.Pattern, what: str, convert: Callable[[str], str] = str) -> Checker:
    def check(value: Any) -> str:
        if not regex.fullmatch(string(value)):
            raise ValueError(f"not {what}: {value!r}")
        return convert(value)
    return check


def domain(value: Any) -> str:
    """A domain name, by the rule SMTP applies (mailgate.core.addresses)."""
    try:
        return normalize_domain(string(value))
    except AddressError:
        raise ValueError(f"not a domain name: {value!r}") from None


def address(value: Any) -> str:
    """An address SMTP would accept, normalized as SMTP normalizes it."""
    try:
        return normalize_mailbox(string(value))
    except AddressError as error:
        raise ValueError(f"not an address (local@domain): {value!r} ({error})") from None


module_name = _matching(_MODULE, "a module name")
header_name = _matching(re.compile(r"[!-9;-~]+"), "a header field name", str.lower)  # RFC 5322 3.6.8 ftext
pipe_name = _matching(re.compile(r"[\w.-]+"), "a pipe name (letters, digits, _ . -)")
# A name that is also a directory name: no "/", "..", hidden or empty names.
directory_name = _matching(re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}"),
                           "a name of letters, digits, _ . - (not starting with a dot)")


def pattern(value: Any) -> str:
    """An address, or "*@domain" for a whole domain."""
    return "*@" + domain(value[2:]) if string(value).startswith("*@") else address(value)


def choice(*options: str) -> Checker:
    def check(value: Any) -> str:
        if string(value) not in options:
            raise ValueError(f"expected one of {' | '.join(options)}, got {value!r}")
        return value
    return check


def positive(parse: Callable[[Any], float]) -> Checker:
    """Zero is never meant: a zero timeout or limit would refuse everything."""
    def check(value: Any) -> Any:
        result = parse(_text_or_number(value))
        if result <= 0:
            raise ValueError(f"must be positive, got {value!r}")
        return result
    return check


def number(value: Any) -> float:
    """An integer or a float, finite."""
    if not math.isfinite(_typed(int, float)(value)):
        raise ValueError(f"not a finite number: {value!r}")
    return float(value)


def port(value: Any) -> int:
    if not 0 < integer(value) < 65536:
        raise ValueError(f"not a port number: {value}")
    return value


def host_port(value: Any) -> str:
    """"host:port", IPv6 as "[::1]:port"; kept as written."""
    match = _HOST_PORT.fullmatch(string(value))
    if not match or not 0 < int(match[1]) < 65536:
        raise ValueError(f"expected host:port, got {value!r}")
    return value


def nameserver(value: Any) -> str:
    """"host:port", or a bare host or IPv6 address meaning port 53."""
    host = string(value)
    if host.count(":") > 1 and not host.startswith("["):
        host = f"[{host}]"
    if not _HOST_PORT.fullmatch(host + ":53"):
        host_port(host)
    return value


def endpoint(value: Any) -> str:
    """A Twisted server endpoint string; parsing on a MemoryReactor binds nothing."""
    try:
        if string(value).startswith("systemd:"):
            _systemd_endpoint(value)
        else:
            serverFromString(MemoryReactor(), value)
    except Exception as error:
        raise ValueError(f"not a server endpoint ({error}): {value!r}") from None
    return value


def _systemd_endpoint(value: str) -> None:
    """Twisted's parser looks the socket up in LISTEN_FDS: outside systemd (check-config
    in a shell) every such endpoint would fail, so only its form is checked here."""
    options = dict(part.partition("=")[::2] for part in value.split(":")[1:])
    unknown = set(options) - {"domain", "index", "name"}
    if unknown:
        raise ValueError(f"unknown option {min(unknown)!r}")
    if not options.get("domain") or not hasattr(socket, "AF_" + options["domain"]):
        raise ValueError("domain must be an address family such as INET, INET6 or UNIX")
    if ("index" in options) == ("name" in options):
        raise ValueError("specify exactly one of index or name")
    if "index" in options and not options["index"].isdigit():
        raise ValueError(f"index must be a number, got {options['index']!r}")


CIPHER_PROFILES = ("intermediate", "legacy")  # mailgate.net.tls.CIPHER_PROFILES says what each offers


def ciphers(value: Any) -> str:
    """A cipher profile name, or an OpenSSL cipher string that selects some suite."""
    if text(value) in CIPHER_PROFILES:
        return value
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(value)
    except ssl.SSLError:
        raise ValueError(f"expected {' | '.join(CIPHER_PROFILES)} or an OpenSSL cipher string that selects "
                         f"some cipher suite, got {value!r}") from None
    return value


def ip_address(value: Any) -> str:
    """One IPv4 or IPv6 address, normalized ("192.0.2.10", "2001:db8::1")."""
    try:
        return str(ipaddress.ip_address(string(value)))
    except ValueError:
        raise ValueError(f"not an IP address: {value!r}") from None


def sni_name(value: Any) -> str:
    """A host name a certificate is served for (tls.sni), or "*.domain" for its one-label names."""
    name = string(value)
    if name.startswith("*."):
        return "*." + domain(name[2:])
    return domain(name)


def destination_name(value: Any) -> str:
    """A recipient domain, or "*" for every destination's default."""
    return "*" if string(value) == "*" else domain(value)


def network(value: Any) -> Network:
    try:
        return ipaddress.ip_network(string(value), strict=False)
    except ValueError:
        raise ValueError(f"not a network (CIDR): {value!r}") from None


def url(value: Any) -> str:
    parts = urlsplit(string(value))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value


def _secret(value: Any) -> str:
    """whsec_ secrets are base64 (Standard Webhooks): catch a bad paste at start-up."""
    if text(value).startswith("whsec_"):
        try:
            base64.b64decode(value[6:], validate=True)
        except binascii.Error:
            raise ValueError("a whsec_ secret must be base64 after the prefix") from None
    return value


def secrets(value: Any) -> tuple[str, ...]:
    return list_of(_secret, non_empty=True)(value) if isinstance(value, list) else (_secret(value),)


def route(webhooks: Collection[str], pipes: Collection[str] = ()) -> Checker:
    """Route strings, shared by relay.transport and mailgate_route (SPEC), parsed into Routes;
    webhook: and pipe: routes must name a table the file defines."""
    def check(value: Any) -> Route:
        try:
            parsed = Route.parse(string(value))
        except RouteError as error:
            raise ValueError(str(error)) from None
        if parsed.scheme == "webhook" and parsed.argument not in webhooks:
            raise ValueError(f"no [[webhook]] is named {parsed.argument!r}")
        if parsed.scheme == "pipe" and parsed.argument not in pipes:
            raise ValueError(f"no [pipe.NAME] table is named {parsed.argument!r}")
        return parsed
    return check


def command(value: Any) -> tuple[str, ...]:
    """An argv list: a program, then its arguments, each passed as it is (no shell)."""
    argv = list_of(string, non_empty=True)(value)
    if not argv[0].strip():
        raise ValueError("the program (the first item) must not be empty")
    return argv
