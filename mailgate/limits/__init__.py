"""Limits on clients: rates per key on an injected clock."""
