"""What every SMTP session of one listener consults: settings, plugins, the deliverer, shared limiters.

An SMTPFactory is built on one ListenerPolicy and hands it to each of its
sessions, which pass it on to the command handlers; a handler reads its
settings here and its per-connection facts from the SessionState, never
from the session protocol itself.
"""

from __future__ import annotations

from typing import Protocol

from twisted.cred.portal import Portal
from twisted.internet.interfaces import IOpenSSLContextFactory, IReactorTime

from mailgate.config import GatewayConfig, ListenConfig
from mailgate.core.meters import NO_METERS, Meters
from mailgate.core.session import Envelope
from mailgate.hooks.calling import Hooks
from mailgate.hooks.events import Events
from mailgate.inbound.transaction import Delivered
from mailgate.limits.admission import Admission
from mailgate.limits.auth_throttle import AuthThrottle
from mailgate.store.maildir_writer import StoredMessage


class MessageDeliverer(Protocol):
    """What the end of DATA needs of mailgate.inbound.transaction.Deliverer."""

    async def deliver(self, envelope: Envelope, message: StoredMessage, queue_id: str) -> list[Delivered]: ...


class ListenerPolicy:
    """The shared, listener-wide part of every session.

    Handlers read the attributes at each use, so replacing one (a test's
    deliverer, say) takes effect for the next command.
    """

    def __init__(
        self,
        config: GatewayConfig,
        listener: ListenConfig,
        hooks: Hooks,
        deliverer: MessageDeliverer,
        clock: IReactorTime,
        tls_options: IOpenSSLContextFactory | None = None,
        portal: Portal | None = None,
        throttle: AuthThrottle | None = None,
        admission: Admission | None = None,
        meters: Meters = NO_METERS,
    ) -> None:
        self.config = config
        self.listener = listener
        self.hooks = hooks
        self.deliverer = deliverer
        self.clock = clock
        self.tls_options = tls_options if listener.tls == "starttls" else None
        self.portal = portal  # twisted.cred Portal over the users file; None: no AUTH
        # shared by all listeners, so guessing on one port slows the others; a
        # caller that wires a portal without one still gets a throttle of its own
        self.throttle = throttle if throttle is not None else AuthThrottle.from_limits(config.limits, clock)
        # the server's one admission for every listener (POP3 too); a policy built alone counts alone
        self.admission = admission if admission is not None else Admission(config.limits, clock)
        self.events = Events(hooks)
        self.meters = meters  # sessions and AUTH failures, for mailgate.ops.metrics

