"""Every hook mailgate calls, with when it is called and what it may return.

Any hook may return a plain value, a Deferred or a coroutine: mailgate awaits
them (see `mailgate.hooks.manager`). Plugins registered later are asked first, so a
user's plugin is asked before the built-ins it may override.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable, Union

import pluggy

if TYPE_CHECKING:
    from mailgate.config import GatewayConfig
    from mailgate.core.session import Envelope, Session

hookspec = pluggy.HookspecMarker("mailgate")

Maybe = Union[Any, Awaitable[Any]]

# --- start-up ---------------------------------------------------------------


@hookspec
def mailgate_configure(config: GatewayConfig) -> Maybe:
    """Read settings and open resources, once, before any listener starts.

    Every plugin is called; Deferreds and coroutines are awaited before
    start-up goes on. A plugin reads its own table as `config.plugin["NAME"]`.
    Raising `mailgate.config.ConfigError` stops start-up with its message.

    Added in 0.1.
    """


# --- SMTP session -----------------------------------------------------------


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


@hookspec(firstresult=True)
def mailgate_message(session: Session, envelope: Envelope, message: bytes) -> Maybe:
    """See, refuse or change one message before it is stored or queued.

    Called once per message at the end of DATA (and BDAT LAST), after the
    built-in size and loop checks, while the client waits. `message` is the
    whole message as received (CRLF line ends, without mailgate's trace
    fields). Return None to go on; a refusal reply (`"550 5.7.1 text"`,
    `"451 4.7.1 text"`) to refuse the message; or a `mailgate.MessageChange`
    adding header fields at the top and/or replacing the message. The first
    non-None answer wins: a refusal ends the transaction, a change is applied
    and the later plugins are not asked.

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
