"""The configuration: etc/mailgate.toml turned into frozen, validated dataclasses.

`mailgate.config.ConfigError` and the dataclasses are public names plugins use.
"""

from mailgate.config.model import (
    EVENT_TYPES,
    ConfigError,
    ServerConfig,
    StateConfig,
    ListenConfig,
    TLSConfig,
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
    PipeConfig,
    SenderRate,
    LimitsConfig,
    PluginsConfig,
    GatewayConfig,
)
from mailgate.config.schema import load_config, parse_config

__all__ = [
    "EVENT_TYPES",
    "ConfigError",
    "ServerConfig",
    "StateConfig",
    "ListenConfig",
    "TLSConfig",
    "SecurityConfig",
    "DomainsConfig",
    "StoreConfig",
    "UsersConfig",
    "ForwardRule",
    "MailingList",
    "RelayConfig",
    "PoolConfig",
    "DestinationConfig",
    "WebhookConfig",
    "EventWebhookConfig",
    "RspamdConfig",
    "PipeConfig",
    "SenderRate",
    "LimitsConfig",
    "PluginsConfig",
    "GatewayConfig",
    "load_config",
    "parse_config",
]
