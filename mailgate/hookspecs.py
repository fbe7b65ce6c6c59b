"""Every hook mailgate calls, with when it is called and what it may return.

Any hook may return a plain value, a Deferred or a coroutine: mailgate awaits
them (see `mailgate.hooks.manager`). Plugins registered later are asked first, so a
user's plugin is asked before the built-ins it may override.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable, Union

import pluggy

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from mailgate.config import GatewayConfig
    from mailgate.core.session import Envelope, Session

hookspec = pluggy.HookspecMarker("mailgate")

Maybe = Union[Any, Awaitable[Any]]

# --- start-up ---------------------------------------------------------------


@hookspec
def mailgate_configure(config: GatewayConfig, reactor: IReactorTime) -> Maybe:
    """Read settings and open resources, once, before any listener starts.

    Every plugin is called; Deferreds and coroutines are awaited before
    start-up goes on. A plugin reads its own table as `config.plugin["NAME"]`.
    `reactor` is the one mailgate runs on (a `task.Clock` in tests): take
    time, timers and connections from it rather than importing the global
    reactor. Raising `mailgate.config.ConfigError` stops start-up with its
    message.

    Added in 0.1 (`reactor` in 0.2).
    """


# --- SMTP session -----------------------------------------------------------


@hookspec(firstresult=True)
def mailgate_connect(session: Session) -> Maybe:
    """Refuse a client before it is greeted.

    Called once per SMTP connection, after the built-in connection limits
    and before the greeting, while the client waits. `session` knows the
    client's address and the listener. Return None to greet the client, or
    a refusal reply (`"554 5.7.1 text"`, `"421 4.7.0 text"`): the client
    hears it instead of the greeting and the connection is closed. The first
    non-None answer wins.

    Added in 0.2.
    """


@hookspec(firstresult=True)
def mailgate_helo(session: Session, name: str) -> Maybe:
    """Refuse a HELO or EHLO name.

    Called on every HELO and EHLO with the name the client gave (`session`
    still holds the previous one). Return None to accept it, or a refusal
    reply: the client hears it and must greet again. The first non-None
    answer wins.

    Added in 0.2.
    """


@hookspec(firstresult=True)
def mailgate_mail_from(session: Session, envelope: Envelope, sender: str) -> Maybe:
    """Refuse a sender at MAIL FROM, once per transaction rather than once per RCPT.

    Called on MAIL FROM once the command's syntax and parameters are known
    good, before the built-in sender checks (ownership, `limits.sender_rate`,
    which are plugins on this hook too, asked after yours). `sender` is the
    normalized address ("" for the null sender); `envelope` is the
    transaction being opened (its `parameters` hold the ESMTP parameters).
    Return None to go on, or a refusal reply. The first non-None answer wins.

    Added in 0.2.
    """


@hookspec(firstresult=True)
def mailgate_forward(recipient: str) -> Maybe:
    """Rewrite one recipient into others before it is routed.

    Called once per RCPT TO, before `mailgate_route`. Return a list of
    addresses that replace the recipient, or None to leave it alone. The
    first non-None answer wins.

    Added in 0.1.
    """


@hookspec(firstresult=True)
def mailgate_route(recipient: str, envelope: Envelope) -> Maybe:
    """Choose where mail for one recipient goes.

    Called once per RCPT TO while the client waits. Return a route string
    (`local`, `local:ADDRESS`, `mx`, `smtp:HOST:PORT`, `webhook:NAME`,
    `reject:550 5.7.1 TEXT`, `discard`, or `SCHEME:ARGS` for a plugin's own
    scheme), or None to let the next plugin decide. The first non-None answer
    wins. When no plugin answers, the recipient is refused with 550 5.1.1.

    Added in 0.1.
    """


@hookspec(firstresult=True)
def mailgate_expand(address: str) -> Maybe:
    """List the members of a mailing list address.

    Called on delivery to a list and on EXPN. Return a list of member
    addresses, or None when the address is not a list this plugin knows.
    The first non-None answer wins.

    Added in 0.1.
    """


@hookspec(firstresult=True)
def mailgate_verify(address: str) -> Maybe:
    """Say whether an address exists, for VRFY.

    Return True, False, or None for "don't know". The first non-None answer
    wins. Only called for clients that `security.vrfy` allows.

    Added in 0.1.
    """


@hookspec
def mailgate_message(session: Session, envelope: Envelope, message: bytes) -> Maybe:
    """See, refuse or change one message before it is stored or queued.

    Called once per message at the end of DATA (and BDAT LAST), after the
    built-in size and loop checks, while the client waits. `message` is the
    whole message as received (CRLF line ends, without mailgate's trace
    fields). Return None to go on; a refusal reply (`"550 5.7.1 text"`,
    `"451 4.7.1 text"`) to refuse the message; or a `mailgate.MessageChange`
    adding header fields at the top, replacing the message, and/or giving
    some recipients new routes. Every plugin is called in turn, each seeing
    the message as the ones before it changed it, until one refuses: the
    refusal ends the transaction and later plugins are not asked.

    Added in 0.2.
    """


@hookspec
def mailgate_event(event: dict[str, Any]) -> Maybe:
    """Hear of every delivery event: received, refused, delivered, deferred, bounced, expired.

    Every plugin is called, after the fact and off the path of the mail: a
    slow or failing plugin never delays or changes a delivery (its errors
    are logged). `event` holds `type`, `time` (ISO 8601 UTC), `queue_id`,
    `mail_from`, `recipient`, `route`, `reply` (the code and text heard or
    sent), `client` (the peer's IP for received/refused) and `attempt`.

    Added in 0.2.
    """


# --- delivery ---------------------------------------------------------------


@hookspec(firstresult=True)
def mailgate_forward_sender(sender: str, recipient: str, route: str) -> Maybe:
    """Choose the envelope sender of a forwarded copy leaving the server.

    Called at the end of DATA, once the message is accepted and before it
    is queued, for each recipient reached through `mailgate_forward` (a
    `[[forward]]` rule, a reversed SRS address, a plugin) whose route goes
    through the queue (not `local`, `list:` or `discard`), with the
    message's envelope sender (`""` for the null sender). Return a new
    envelope sender for that recipient's copy, or None to keep the sender.
    The first non-None answer wins. Recipients given another sender leave
    as a queue entry of their own, and its bounces go to that sender. The
    built-in SRS (`[srs]`) answers for `mx` and `smtp:` routes.

    Added in 0.2.
    """


@hookspec(firstresult=True)
def mailgate_deliver_inline(route: str, envelope: Envelope, message: bytes) -> Maybe:
    """Deliver while the client waits at the end of DATA, instead of queueing.

    Called once per non-local route of an accepted message, before anything
    is stored or queued. Return None to let the route be queued as usual
    (then `mailgate_deliver` handles it later), or True once delivered.
    Raising `mailgate.TemporaryFailure` or `mailgate.PermanentFailure`
    makes the whole transaction fail with that error's SMTP reply, so the
    sending server keeps (4xx) or bounces (5xx) the message itself. The
    first non-None answer wins. Used by webhooks in `sync` mode.

    Added in 0.1.
    """


@hookspec(firstresult=True)
def mailgate_deliver(route: str, envelope: Envelope, message: bytes) -> Maybe:
    """Deliver one message along a route whose scheme no built-in owns.

    Called by the outbound queue on each delivery attempt, once per message
    and route, with that route's pending recipients in `envelope.rcpt_to`.
    `message` is the whole message, headers included, with CRLF line ends.
    Return None if the route's scheme is not this plugin's, True once the
    message is delivered; raise `mailgate.TemporaryFailure` to have it
    retried or `mailgate.PermanentFailure` to have it bounced. Any other
    exception counts as temporary. The first non-None answer wins.

    Added in 0.1.
    """


@hookspec(firstresult=True)
def mailgate_pool(envelope: Envelope) -> Maybe:
    """Choose the [[relay.pool]] (dedicated sending addresses) a message is relayed from.

    Called by the outbound queue at each SMTP delivery attempt of a message
    (routes `mx` and `smtp:`, and the smarthost), once per destination,
    with the message's sender and that destination's pending recipients in
    `envelope`. Return a pool's `name`, or None to let the pools' `senders`
    patterns decide (no match: the system's address and server.hostname).
    A name no pool has is logged and ignored. A plugin that fails defers
    the delivery (never from an address it did not choose). The first
    non-None answer wins.

    Added in 0.2.
    """
