"""mailgate: a pluggable mail gateway on Twisted.

The names plugins use live here: `hookimpl` to mark hook implementations,
the failures a delivery hook raises, the types hooks receive, and
`authentication_results(message, authserv_id)`, the SPF/DKIM/DMARC
results mailgate recorded in a message.
"""

import pluggy

from mailgate.core.errors import PermanentFailure, TemporaryFailure
from mailgate.core.message_change import MessageChange
from mailgate.core.reply import Reply
from mailgate.core.route import Route
from mailgate.core.session import Envelope, Session
from mailgate.mailauth.results import authentication_results

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("mailgate")

__all__ = [
    "Envelope", "MessageChange", "PermanentFailure", "Reply", "Route", "Session", "TemporaryFailure", "__version__",
    "authentication_results", "hookimpl",
]
