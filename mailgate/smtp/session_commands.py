"""The commands about the session rather than a message: HELO, EHLO, STARTTLS, RSET, NOOP, QUIT, HELP."""

from __future__ import annotations

from mailgate.core.reply import Reply
from mailgate.smtp.auth_command import auth_offered
from mailgate.smtp.channel import Channel
from mailgate.smtp.policy import ListenerPolicy
from mailgate.smtp.state import SessionState

OK = Reply(250, "2.0.0", "Ok")
BYE = Reply(221, "2.0.0", "Bye")
HELP = Reply(214, "2.0.0", "Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT HELP VRFY")
HELO_SYNTAX = Reply(501, "5.5.4", "Syntax: HELO hostname")
EHLO_SYNTAX = Reply(501, "5.5.4", "Syntax: EHLO hostname")
STARTTLS_SYNTAX = Reply(501, "5.5.4", "Syntax: STARTTLS")
NO_STARTTLS = Reply(502, "5.5.1", "STARTTLS not available")
READY_FOR_TLS = Reply(220, "2.0.0", "Ready to start TLS")


def helo(argument: str, state: SessionState, channel: Channel, policy: ListenerPolicy) -> Reply:
    if not printable(argument):
        return HELO_SYNTAX
    state.greet(argument, esmtp=False)
    return Reply(250, text=policy.config.server.hostname)


def ehlo(argument: str, state: SessionState, channel: Channel, policy: ListenerPolicy) -> Reply:
    if not printable(argument):
        return EHLO_SYNTAX
    state.greet(argument, esmtp=True)
    return Reply(250, text="\n".join([policy.config.server.hostname, *extensions(state, policy)]))


def extensions(state: SessionState, policy: ListenerPolicy) -> list[str]:
    """The EHLO keywords (RFC 5321 4.1.1.1) this connection may use now."""
    names = ["PIPELINING", f"SIZE {policy.config.limits.max_message_size}", "8BITMIME", "ENHANCEDSTATUSCODES"]
    if can_starttls(state, policy):
        names.append("STARTTLS")
    if auth_offered(state, policy) and state.session.user is None:
        names.append("AUTH PLAIN LOGIN")
    return [*names, "HELP"]


def can_starttls(state: SessionState, policy: ListenerPolicy) -> bool:
    return policy.tls_options is not None and not state.session.tls


def starttls(argument: str, state: SessionState, channel: Channel, policy: ListenerPolicy) -> Reply | None:
    if argument:
        return STARTTLS_SYNTAX
    if not can_starttls(state, policy):
        return NO_STARTTLS
    channel.start_tls(READY_FOR_TLS)
    state.start_tls()
    return None


def rset(argument: str, state: SessionState, channel: Channel, policy: ListenerPolicy) -> Reply:
    state.envelope = None
    return OK


def noop(argument: str, state: SessionState, channel: Channel, policy: ListenerPolicy) -> Reply:
    return OK


def help_(argument: str, state: SessionState, channel: Channel, policy: ListenerPolicy) -> Reply:
    return HELP


def quit_(argument: str, state: SessionState, channel: Channel, policy: ListenerPolicy) -> None:
    channel.close(BYE)


def printable(text: str) -> bool:
    """Non-empty printable ASCII: a HELO name is copied into Received: headers."""
    return bool(text) and all(" " <= char <= "~" for char in text)
