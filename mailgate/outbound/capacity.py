"""How much the outbound queue does at once, for what is sized to it (attempt slots).

Far above one destination's concurrency ([relay.destination], 20 by
default): a destination that hangs holds at most its own connections, and
its waiting attempts are cheap, so the others go on (no head-of-line
blocking).
"""

MAX_CONCURRENT_ATTEMPTS = 1000  # queued messages being attempted at one time
