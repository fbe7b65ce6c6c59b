"""Fakes and drivers for plugin authors: routing without sockets, and whole SMTP conversations in memory.

`route_message` asks where each recipient goes (and with `deliver=True`
delivers through the plugins' routes); `converse` runs the server's own
SMTP session, so every hook is met as a client would meet it. Both build
the plugins as start-up does; neither needs a reactor, sockets or a disk.
See mailgate/testing/routing.py and conversation.py for examples.
"""

from mailgate.testing.conversation import Conversation, converse
from mailgate.testing.memory import MemoryStore
from mailgate.testing.routing import (
    DEFAULT_MESSAGE,
    Delivered,
    DeliveryAttempt,
    RecordingSink,
    RoutingResult,
    as_config,
    route_message,
    route_message_async,
)

__all__ = [
    "Conversation", "DEFAULT_MESSAGE", "Delivered", "DeliveryAttempt", "MemoryStore", "RecordingSink",
    "RoutingResult", "as_config", "converse", "route_message", "route_message_async",
]
