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
    workers: int = 1  # processes sharing every listener; "auto" is resolved to the CPU count when read


@dataclass(frozen=True)
class StateConfig:
    """[state]: where limits' counters live when more than one process or node must share them."""

    backend: str = "memory"  # memory | redis://HOST:PORT/DB
    fallback_seconds: float = 30.0  # Redis unreachable: limits fail open this long, then 451 4.3.0


@dataclass(frozen=True)
class ListenConfig:
    name: str
    protocol: str  # smtp | submission | pop3
    endpoint: str  # a Twisted server endpoint string
    tls: str = "none"  # none | starttls | implicit
    auth: str = "optional"  # none | optional | required; submission defaults to required
    proxy: tuple[Network, ...] = ()  # peers that must send a PROXY protocol header (HAProxy v1/v2)


@dataclass(frozen=True)
class SNICertificate:
    """[tls.sni."HOSTNAME"]: the pair served to clients that ask for that name (SNI)."""

    certificate: str
    key: str


@dataclass(frozen=True)
class TLSConfig:
    certificate: str = "var/tls/cert.pem"
    key: str = "var/tls/key.pem"
    ciphers: str = "intermediate"  # intermediate | legacy | an OpenSSL cipher string (TLS 1.2 suites)
    sni: Mapping[str, SNICertificate] = field(default_factory=lambda: MappingProxyType({}))  # lower-cased names


@dataclass(frozen=True)
class SecurityConfig:
    plaintext_auth: str = "tls"  # tls | always
    vrfy: str = "authenticated"  # off | authenticated | all
    expn: str = "authenticated"  # off | authenticated | all
    bare_newline: str = "normalize"  # normalize | reject: may a message hold a bare LF (as Postfix 3.9)
    sender_login: str = "owned"  # owned | any: envelope senders an authenticated user may use
    dsn: str = "all"  # all | submission: which listeners offer DSN (RFC 3461)


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
class SenderRate:
    messages: int
    per_seconds: float


@dataclass(frozen=True)
class PoolConfig:
    """[[relay.pool]]: dedicated sending addresses, their EHLO name and who sends through them."""

    name: str
    addresses: tuple[str, ...]  # local source addresses, used in turn
    helo: str = ""  # "" = server.hostname
    senders: tuple[str, ...] = ()  # envelope senders ("*@domain" or addresses) that use it


@dataclass(frozen=True)
class DestinationConfig:
    """[relay.destination."DOMAIN"]: limits for the destination (MX host set) that domain uses."""

    concurrency: int = 20  # connections at once to that destination's MX hosts
    rate: SenderRate | None = None  # messages started per period; None = no limit


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
    mta_sts: bool = True  # honour MTA-STS (RFC 8461) policies
    mta_sts_ca_file: str = ""  # extra CAs (PEM) for the policy fetch and MX certificates under a policy
    mta_sts_port: int = 443  # the policy host's HTTPS port (tests)
    dane: bool = False  # DANE (RFC 7672) for MX hosts with authenticated TLSA records
    smarthost_username: str = ""  # AUTH to the smarthost; "" = none
    smarthost_password_file: str = ""  # its password, one line
    smarthost_tls: str = "starttls"  # starttls | implicit | none
    pool: tuple[PoolConfig, ...] = ()
    destination: Mapping[str, DestinationConfig] = field(default_factory=lambda: MappingProxyType({}))

    def destination_for(self, domain: str) -> DestinationConfig:
        """The table for `domain`, else the "*" table, else the defaults."""
        return self.destination.get(domain) or self.destination.get("*") or DestinationConfig()


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


# Header fields signed when present (RFC 6376 5.4.1's list); From always, and once more (oversigned).
DKIM_SIGNED_HEADERS = (
    "from", "sender", "reply-to", "subject", "date", "message-id", "to", "cc", "in-reply-to", "references",
    "mime-version", "content-type", "content-transfer-encoding", "content-id", "content-description",
    "resent-date", "resent-from", "resent-sender", "resent-to", "resent-cc", "resent-message-id",
    "list-id", "list-help", "list-unsubscribe", "list-unsubscribe-post", "list-subscribe", "list-post",
    "list-owner", "list-archive",
)
AUTHENTICATION_CHECKS = ("spf", "dkim", "dmarc")


@dataclass(frozen=True)
class DKIMConfig:
    keys_dir: str = "var/dkim"  # <keys_dir>/<domain>/<selector>.pem
    sign: str = "authenticated"  # authenticated | off
    headers: tuple[str, ...] = DKIM_SIGNED_HEADERS  # lower-cased; "from" always among them


@dataclass(frozen=True)
class AuthenticationConfig:
    checks: tuple[str, ...] = AUTHENTICATION_CHECKS  # () = off
    dns_timeout_seconds: float = 5.0  # per lookup; then temperror
    authserv_id: str = ""  # "" = server.hostname (mailgate.mailauth.results.our_authserv_id)
    dmarc: str = "report"  # report | enforce


@dataclass(frozen=True)
class SRSConfig:
    secret: str = ""  # "" = no SRS
    domain: str = ""  # "" = server.hostname


@dataclass(frozen=True)
class PipeConfig:
    name: str
    command: tuple[str, ...]  # argv, run without a shell; the message on stdin
    timeout_seconds: float = 60.0


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
    max_connections: int | None = None  # client connections open at once, all listeners; None: from RLIMIT_NOFILE
    auth_failures_per_account: int = 5  # bad passwords per (client IP, account) within auth_penalty
    auth_failures_per_ip: int = 100  # bad passwords per client IP, any accounts, within auth_penalty
    auth_penalty_seconds: float = 300.0  # how long a bad password counts


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
    dkim: DKIMConfig = DKIMConfig()
    authentication: AuthenticationConfig = AuthenticationConfig()
    srs: SRSConfig = SRSConfig()
    pipe: Mapping[str, PipeConfig] = field(default_factory=lambda: MappingProxyType({}))
    limits: LimitsConfig = LimitsConfig()
    metrics: MetricsConfig = MetricsConfig()
    log: LogConfig = LogConfig()
    plugins: PluginsConfig = PluginsConfig()
    state: StateConfig = StateConfig()
    plugin: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: MappingProxyType({}))
    source: str = "<defaults>"  # the file it was read from, for messages
