"""MAIL FROM (RFC 5321 4.1.1.2): parameters, sender ownership, sender rate, relay permission."""

from __future__ import annotations

import math
from ipaddress import ip_address
from typing import Any

from mailgate.core.addresses import AddressError, normalize_mailbox, parse_command_path
from mailgate.config import GatewayConfig
from mailgate.core.session import Envelope, Session


class SMTPMailCommand:
    """The MAIL command, mixed into the SMTP session: it opens the envelope."""

    def smtp_MAIL(self: Any, argument: str) -> None:
        if not self._helo:
            return self._send(503, "5.5.1 Send HELO/EHLO first")
        if self._envelope is not None:
            return self._send(503, "5.5.1 Nested MAIL command")
        if self.factory.listener.auth == "required" and self._authenticated_as is None:
            return self._send(530, "5.7.0 Authentication required")
        try:
            path, params = parse_command_path(argument, "FROM")
            sender = normalize_mailbox(path) if path else ""
            self._check_mail_params(params)
            self._check_sender_owned(sender)
            self._check_sender_rate()
        except AddressError as exc:
            return self._send(501, f"5.5.4 {exc}")
        except _Refused as refusal:
            return self._send(refusal.code, refusal.text)
        session = Session(peer=self._client_ip, helo=self._helo, user=self._authenticated_as,
                          tls=self._secure(), listener=self.factory.listener.name)
        self._envelope = Envelope(mail_from=sender, parameters=params, session=session, may_relay=self._may_relay())
        self._send(250, "2.1.0 Ok")
        return None

    def _check_mail_params(self: Any, params: dict[str, str | None]) -> None:
        for name, value in params.items():
            if name == "SIZE" and value and value.isdigit():
                if int(value) > self.factory.config.limits.max_message_size:
                    raise _Refused(552, "5.3.4 Message size exceeds fixed limit")
            elif name == "BODY" and value and value.upper() in ("7BIT", "8BITMIME"):
                continue
            else:
                raise _Refused(555, f"5.5.4 Unsupported parameter {name}")

    def _check_sender_rate(self: Any) -> None:
        """limits.sender_rate: messages per authenticated user, counted at MAIL."""
        if self._authenticated_as is None:
            return
        wait = self.factory.sender_rate.take(self._authenticated_as)
        if wait:
            raise _Refused(450, f"4.7.1 Sender rate limit exceeded, try again in {math.ceil(wait)} seconds")

    def _check_sender_owned(self: Any, sender: str) -> None:
        """An authenticated user sends as itself or its aliases, not as anyone."""
        user = self._authenticated_as
        if user is None or not sender or self.factory.config.security.sender_login == "any":
            return
        if sender != user and user not in self.factory.owned_senders.get(sender, ()):
            raise _Refused(553, "5.7.1 Sender address not owned by the authenticated user")

    def _may_relay(self: Any) -> bool:
        if self._authenticated_as is not None:
            return True
        try:
            client = ip_address(self._client_ip)
        except ValueError:
            return False
        return any(client in net for net in self.factory.config.relay.allowed_networks)


class _Refused(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code, self.text = code, text


def owned_senders(config: GatewayConfig) -> dict[str, frozenset[str]]:
    """Sender address -> the users who may use it besides itself: the targets of an
    exact forward rule (an alias delivering to them)."""
    owners: dict[str, frozenset[str]] = {}
    for rule in config.forward:
        if not rule.match.startswith("*@"):
            owners[rule.match] = owners.get(rule.match, frozenset()) | frozenset(rule.to)
    return owners
