"""mailgate: a pluggable mail gateway on Twisted.

The names plugins use live here: `hookimpl` to mark hook implementations,
the failures a delivery hook raises, and the types hooks receive.
"""

import pluggy

from mailgate.core.errors import PermanentFailure, TemporaryFailure
from mailgate.core.message_change import MessageChange
from mailgate.core.reply import Reply
from mailgate.core.route import Route
from mailgate.core.session import Envelope, Session

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("mailgate")

__all__ = [
    "Envelope", "MessageChange", "PermanentFailure", "Reply", "Route", "Session", "TemporaryFailure", "__version__", "hookimpl",
]
