"""How much the outbound queue does at once, for what is sized to it (attempt slots, pools)."""

MAX_CONCURRENT_ATTEMPTS = 20  # queued messages being attempted at one time
