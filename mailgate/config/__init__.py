"""The configuration: etc/mailgate.toml turned into frozen, validated dataclasses.

`mailgate.config.ConfigError` and the dataclasses are public names plugins use.
"""

from mailgate.config.model import (
    EVENT_TYPES,
    ConfigError,
    ServerConfig,
    ListenConfig,
    TLSConfig,
    SecurityConfig,
    DomainsConfig,
    StoreConfig,
    UsersConfig,
    ForwardRule,
    MailingList,
    RelayConfig,
    WebhookConfig,
    EventWebhookConfig,
    RspamdConfig,
    PipeConfig,
    SenderRate,
    LimitsConfig,
    MetricsConfig,
    LogConfig,
    PluginsConfig,
    GatewayConfig,
)
from mailgate.config.schema import load_config, parse_config

__all__ = [
    "EVENT_TYPES",
    "ConfigError",
    "ServerConfig",
    "ListenConfig",
    "TLSConfig",
    "SecurityConfig",
    "DomainsConfig",
    "StoreConfig",
    "UsersConfig",
    "ForwardRule",
    "MailingList",
    "RelayConfig",
    "WebhookConfig",
    "EventWebhookConfig",
    "RspamdConfig",
    "PipeConfig",
    "SenderRate",
    "LimitsConfig",
    "MetricsConfig",
    "LogConfig",
    "PluginsConfig",
    "GatewayConfig",
    "load_config",
    "parse_config",
]
