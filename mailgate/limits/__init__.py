"""Limits on clients: rates per key, the admission of connections, the throttle on password guessing."""
