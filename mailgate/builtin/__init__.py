"""Built-in plugins: mailgate's own behaviours, on the same hooks users get."""

from __future__ import annotations

from typing import Iterable

from pluggy import PluginManager

from mailgate.config import GatewayConfig
from mailgate.core.meters import NO_METERS, Meters
from mailgate.hooks.manager import build_plugin_manager


def builtin_plugins(meters: Meters = NO_METERS, previous: Iterable[object] = ()) -> list[object]:
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

    Each configuration gets new objects, so that on a reload sessions in
    flight keep asking the old ones, except the built-ins marked
    `process_wide` (what they hold must outlive a configuration: the
    event webhooks' spools, the sender rate counters): those of `previous`
    (the running generation's built-ins) are kept, to be configured again.
    `meters` counts webhook requests.
    """
    from mailgate.builtin import (
        authentication, dkim_signing, event_webhook, forward, lists, local, loop_detection, pipe, relay_policy, rspamd,
        sender_policy, srs, transport, webhook,
    )

    fresh = [
        dkim_signing.DKIMSigning(), rspamd.RspamdScanner(), authentication.AuthenticationChecks(),
        relay_policy.RelayPolicy(), local.LocalMailboxes(), transport.TransportTable(),
        webhook.WebhookGateway(meters=meters), lists.MailingLists(), forward.ForwardRules(), pipe.PipeGateway(),
        srs.SRS(), event_webhook.EventWebhooks(meters=meters), sender_policy.SenderPolicy(),
        loop_detection.LoopDetection(),
    ]
    kept = {type(plugin): plugin for plugin in previous if getattr(plugin, "process_wide", False)}
    return [kept.get(type(plugin), plugin) for plugin in fresh]


def load_plugins(config: GatewayConfig, extra: Iterable[object] = (), meters: Meters = NO_METERS,
                 previous: Iterable[object] = ()) -> PluginManager:
    """The plugins a gateway runs: the built-ins, then the operator's (see build_plugin_manager)."""
    return build_plugin_manager(config, builtin_plugins(meters, previous), extra)
