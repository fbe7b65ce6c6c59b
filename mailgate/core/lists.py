"""Mailing-list conventions: the List-Id value (RFC 2919) and the bounce address of list copies."""

from __future__ import annotations

BOUNCE_SUFFIX = "-bounces"


def bounce_address(list_address: str) -> str:
    """`team@example.test` -> `team-bounces@example.test`: the envelope sender of list copies."""
    local, _, domain = list_address.rpartition("@")
    return f"{local}{BOUNCE_SUFFIX}@{domain}"


def list_id(list_address: str) -> str:
    """RFC 2919 List-Id value: `<team.example.test>`."""
    return "<" + list_address.replace("@", ".") + ">"
