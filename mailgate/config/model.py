"""The configuration's shape: frozen dataclasses, one per TOML table, with their defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from mailgate.config.checks import Network
from mailgate.core.route import Route


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
    ciphers: str = "intermediate"  # intermediate | legacy | an OpenSSL cipher string (TLS 1.2 suites)


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
    delay_warning_seconds: float = 0.0  # tell the sender mail is delayed after this long; 0 = never
    connection_cache_seconds: float = 2.0  # a clean session waits this long for the next message; 0 = never
    tls: str = "opportunistic"  # none | opportunistic | verify
    transport: Mapping[str, Route] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class WebhookConfig:
    name: str
    url: str
    match: tuple[str, ...] = ()  # none: reached only through routes (relay.transport, plugins)
    secrets: tuple[str, ...] = ()  # `secret` as a list; several sign during rotation
    format: str = "json"  # json | raw
    mode: str = "queued"  # queued | sync
    timeout_seconds: float = 10.0


# The `type` of a mailgate_event event, in the order a message meets them.
EVENT_TYPES = ("received", "refused", "delivered", "deferred", "bounced", "expired")


@dataclass(frozen=True)
class EventWebhookConfig:
    name: str  # also its spool directory, <state_dir>/events/<name>/
    url: str
    secrets: tuple[str, ...] = ()  # as for [[webhook]]
    events: tuple[str, ...] = EVENT_TYPES  # the event types it is sent
    timeout_seconds: float = 10.0


@dataclass(frozen=True)
class RspamdConfig:
    url: str = ""  # "" = no scanning
    reject_score: float = 15.0
    header_score: float = 6.0
    timeout_seconds: float = 5.0


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
class MetricsConfig:
    endpoint: str = ""  # a Twisted server endpoint string for /metrics and the status page; "" = off
    destinations: int = 10  # queue depth is told for this many destinations, the rest as "other"


@dataclass(frozen=True)
class LogConfig:
    format: str = "text"  # text | json: one JSON object per line
    twisted_noise: bool = False  # keep Twisted's own "Starting factory ..." lines


@dataclass(frozen=True)
class PluginsConfig:
    paths: tuple[str, ...] = ("plugins",)
    enable: tuple[str, ...] = ()
    timeout_seconds: float = 30.0  # per plugin and hook call; then the plugin has failed (4xx, fail closed)


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
    event_webhook: tuple[EventWebhookConfig, ...] = ()
    rspamd: RspamdConfig = RspamdConfig()
    pipe: Mapping[str, PipeConfig] = field(default_factory=lambda: MappingProxyType({}))
    limits: LimitsConfig = LimitsConfig()
    metrics: MetricsConfig = MetricsConfig()
    log: LogConfig = LogConfig()
    plugins: PluginsConfig = PluginsConfig()
    plugin: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: MappingProxyType({}))
    source: str = "<defaults>"  # the file it was read from, for messages
