"""Built-in plugins: mailgate's own behaviours, on the same hooks users get."""

from __future__ import annotations

from typing import Iterable

from pluggy import PluginManager

from mailgate.config import GatewayConfig
from mailgate.hooks.manager import build_plugin_manager


def builtin_plugins() -> list[object]:
    """The default plugins, in registration order (asked last to first)."""
    from mailgate.builtin import (
        event_webhook, forward, lists, local, pipe, relay_policy, rspamd, transport, webhook,
    )

    # rspamd first, so asked last of the built-ins at the end of DATA: its
    # X-Spam change is a first answer, which would end the asking early.
    return [
        rspamd.RspamdScanner(), relay_policy.RelayPolicy(), local.LocalMailboxes(), transport.TransportTable(),
        webhook.WebhookGateway(), lists.MailingLists(), forward.ForwardRules(), pipe.PipeGateway(),
        event_webhook.EventWebhooks(),
    ]


def load_plugins(config: GatewayConfig, extra: Iterable[object] = ()) -> PluginManager:
    """The plugins a gateway runs: the built-ins, then the operator's (see build_plugin_manager)."""
    return build_plugin_manager(config, builtin_plugins(), extra)
