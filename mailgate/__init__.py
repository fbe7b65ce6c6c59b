"""mailgate: a pluggable mail gateway on Twisted."""

import pluggy

from mailgate.core.errors import PermanentFailure, TemporaryFailure

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("mailgate")

__all__ = ["hookimpl", "PermanentFailure", "TemporaryFailure", "__version__"]
