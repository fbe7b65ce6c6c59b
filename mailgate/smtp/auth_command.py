"""SMTP AUTH (RFC 4954): PLAIN and LOGIN exchanges over twisted.cred, throttled per IP and account.

The exchange is a coroutine: each challenge goes out through the Channel
and `channel.read_line()` hands it the client's next line, so the
session's ordering of pipelined input holds throughout.
"""

from __future__ import annotations

import base64
from typing import cast

from twisted.cred.credentials import ICredentials, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet.task import deferLater
from twisted.logger import Logger

from mailgate.accounts.cred import IMailAccount
from mailgate.accounts.sasl import SASLCancelled, SASLMalformed, decode_response, parse_plain
from mailgate.core.reply import Reply
from mailgate.smtp.channel import Channel, Pending
from mailgate.smtp.policy import ListenerPolicy
from mailgate.smtp.state import SessionState

log = Logger()

MECHANISMS = ("PLAIN", "LOGIN")
EMPTY_CHALLENGE = Reply(334)
USERNAME_PROMPT = Reply(334, text=base64.b64encode(b"Username:").decode())
PASSWORD_PROMPT = Reply(334, text=base64.b64encode(b"Password:").decode())
SUCCESS = Reply(235, "2.7.0", "Authentication successful")
NOT_AVAILABLE = Reply(502, "5.5.1", "AUTH not available")
ALREADY = Reply(503, "5.5.1", "Already authenticated")
IN_TRANSACTION = Reply(503, "5.5.1", "AUTH not allowed during a mail transaction")
TLS_FIRST = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication type")
CANCELLED = Reply(501, "5.0.0", "Authentication cancelled")
MALFORMED = Reply(501, "5.5.2", "Malformed authentication data")
TEMPORARY = Reply(454, "4.7.0", "Temporary authentication failure")
INVALID = Reply(535, "5.7.8", "Authentication credentials invalid")
TOO_MANY_FAILURES = Reply(421, "4.7.0", "Too many authentication failures")
# An attempt refused unchecked during its penalty (mailgate.limits.auth_throttle). 454, not 535: RFC
# 4954 6 says a client hearing 454 must not ask its user for another password, and the password may
# well be right (the owner, after someone else's guesses); 535 would tell the owner it is wrong, and
# MUAs drop or re-prompt a stored password on 535. The answer is the same whatever the password.
PENALTY = Reply(454, "4.7.0", "Too many authentication failures, try again later")


def auth(argument: str, state: SessionState, channel: Channel, policy: ListenerPolicy) -> Reply | Pending:
    """Refuse what the session's state forbids; otherwise run the exchange (a coroutine)."""
    portal = policy.portal
    if portal is None or policy.listener.auth == "none":
        return NOT_AVAILABLE
    if state.session.user is not None:
        return ALREADY
    if state.envelope is not None:
        return IN_TRANSACTION
    if not auth_offered(state, policy):
        return TLS_FIRST
    mechanism, _, initial = argument.partition(" ")
    if mechanism.upper() not in MECHANISMS:
        return UNKNOWN_MECHANISM
    return authenticate(mechanism.upper(), initial.strip(), portal, state, channel, policy)


def auth_offered(state: SessionState, policy: ListenerPolicy) -> bool:
    """security.plaintext_auth: passwords cross the wire in the clear only when it says "always"."""
    if policy.listener.auth == "none" or policy.portal is None:
        return False
    return state.session.tls or policy.config.security.plaintext_auth == "always"


async def authenticate(mechanism: str, initial: str, portal: Portal, state: SessionState, channel: Channel,
                       policy: ListenerPolicy) -> Reply | None:
    try:
        username, password = await credentials(mechanism, initial, channel)
    except SASLCancelled:
        return CANCELLED
    except SASLMalformed:
        return MALFORMED
    peer = state.session.peer
    if not policy.throttle.admit(peer, username, "smtp"):
        return PENALTY
    try:
        user = await checked(portal, username, password, peer, policy)
    except Exception:
        log.failure("AUTH check failed for {ip}", ip=peer)
        return TEMPORARY
    if user is None:
        return await failed(username, state, channel, policy)
    state.authenticated(user)
    log.info("auth: SMTP from [{client}]: user=<{user}> listener={listener}", event="auth.login", protocol="smtp",
             client=peer, user=user, listener=state.session.listener)
    return SUCCESS


async def checked(portal: Portal, username: str, password: str, peer: str, policy: ListenerPolicy) -> str | None:
    """The address an admitted attempt logs in as, or None for wrong credentials (counted)."""
    login = cast(ICredentials, UsernamePassword(username.encode("utf-8"), password.encode("utf-8")))  # @implementer
    try:
        _, avatar, _ = await portal.login(login, None, IMailAccount)
    except UnauthorizedLogin:
        policy.throttle.record_failure(peer, username)
        return None
    finally:
        policy.throttle.release(peer, username)
    policy.throttle.record_success(peer, username)
    return str(avatar)  # mailgate.accounts.cred.AddressRealm: the avatar is the address


def printable(text: str) -> str:
    """A client's words, safe in one log line: no line break or control character to forge another."""
    return "".join(char if char.isprintable() else "?" for char in text)


async def credentials(mechanism: str, initial: str, channel: Channel) -> tuple[str, str]:
    """(username, password) from the client; SASLCancelled or SASLMalformed if it gives none."""
    if mechanism == "PLAIN":
        if not initial:
            channel.send(EMPTY_CHALLENGE)
            initial = await channel.read_line()
        return parse_plain(decode_response(initial))
    username = decode_response(initial) if initial else None
    if username is None:
        channel.send(USERNAME_PROMPT)
        username = decode_response(await channel.read_line())
    channel.send(PASSWORD_PROMPT)
    password = decode_response(await channel.read_line())
    try:
        return username.decode("utf-8"), password.decode("utf-8")
    except UnicodeDecodeError:
        raise SASLMalformed() from None


async def failed(username: str, state: SessionState, channel: Channel, policy: ListenerPolicy) -> Reply | None:
    """535 after a delay that grows with the recent failures of (IP, account); 421 and the end at the limit.

    The log line names the client and the account tried (fail2ban's pattern,
    docs/operations.md); the metrics count it by protocol.
    """
    throttle, peer = policy.throttle, state.session.peer
    policy.meters.auth_failed("smtp")
    log.warn("auth failed: SMTP from [{client}]: user=<{user}> listener={listener}", event="auth.failure",
             protocol="smtp", client=peer, user=printable(username[:64]), listener=state.session.listener)
    delay = throttle.delay_seconds(peer, username)
    if delay:
        await deferLater(policy.clock, delay)
    if throttle.locked_out(peer, username):
        channel.close(TOO_MANY_FAILURES)
        return None
    return INVALID
