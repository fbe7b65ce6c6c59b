"""Built-in plugins: mailgate's own behaviours, on the same hooks users get."""

from __future__ import annotations

from typing import Iterable

from pluggy import PluginManager

from mailgate.config import GatewayConfig
from mailgate.hooks.manager import build_plugin_manager


def builtin_plugins() -> list[object]:
    """The default plugins, in registration order: pluggy asks the last registered first.

    Operators' plugins are registered after all of these, so they are asked
    before any built-in (unless a built-in is marked tryfirst, as loop
    detection is). The order, as asked at each hook (docs/plugins.md):

    - mailgate_mail_from: sender policy (ownership, then rate).
    - mailgate_forward: SRS (a valid SRS address to the address inside),
      forward rules.
    - mailgate_route: SRS (forged or expired SRS addresses refused), pipe
      (none), forward rules, lists, webhooks, transport table, local
      mailboxes, relay policy (asked last: the catch-all).
    - mailgate_message: loop detection (first of all), authentication
      checks, rspamd, DKIM signing (last: it signs what the others left).
    - mailgate_forward_sender: SRS.
    """
    from mailgate.builtin import (
        authentication, dkim_signing, event_webhook, forward, lists, local, loop_detection, pipe, relay_policy, rspamd,
        sender_policy, srs, transport, webhook,
    )

    return [
        dkim_signing.DKIMSigning(), rspamd.RspamdScanner(), authentication.AuthenticationChecks(),
        relay_policy.RelayPolicy(), local.LocalMailboxes(), transport.TransportTable(), webhook.WebhookGateway(),
        lists.MailingLists(), forward.ForwardRules(), pipe.PipeGateway(), srs.SRS(), event_webhook.EventWebhooks(),
        sender_policy.SenderPolicy(), loop_detection.LoopDetection(),
    ]


def load_plugins(config: GatewayConfig, extra: Iterable[object] = ()) -> PluginManager:
    """The plugins a gateway runs: the built-ins, then the operator's (see build_plugin_manager)."""
    return build_plugin_manager(config, builtin_plugins(), extra)
