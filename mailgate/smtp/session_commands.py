"""The commands about the session rather than a message: HELO, EHLO, STARTTLS, RSET, NOOP, QUIT, HELP; a stray PROXY."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mailgate.core.reply import Reply
from mailgate.smtp.auth_command import auth_offered
from mailgate.hooks.calling import FAILED, HookFailed
from mailgate.smtp.channel import Channel, Pending
from mailgate.smtp.dsn_parameters import dsn_offered
from mailgate.smtp.policy import ListenerPolicy
from mailgate.smtp.state import SessionState

OK = Reply(250, "2.0.0", "Ok")
BYE = Reply(221, "2.0.0", "Bye")
HELP = Reply(214, "2.0.0", "Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY")
HELO_SYNTAX = Reply(501, "5.5.4", "Syntax: HELO hostname")
EHLO_SYNTAX = Reply(501, "5.5.4", "Syntax: EHLO hostname")
STARTTLS_SYNTAX = Reply(501, "5.5.4", "Syntax: STARTTLS")
NO_STARTTLS = Reply(502, "5.5.1", "STARTTLS not available")
READY_FOR_TLS = Reply(220, "2.0.0", "Ready to start TLS")
CONNECT_FAILED = Reply(421, "4.3.0", "Service temporarily unavailable, try again later")  # a greeting: 220, 421, 554
PROXY_REFUSED = Reply(550, "5.7.1", "PROXY protocol not accepted from your address")

log = Logger()


def greeting(state: SessionState, channel: Channel, policy: ListenerPolicy,
             admission: Deferred[Reply | None] | None = None) -> Reply | Pending:
    """The 220 greeting, named as the connection's server (SNI), once the server's shared Admission
    (with workers, the master answers it) and the mailgate_connect plugins agree."""
    greeting = Reply(220, text=f"{channel.server_name()} ESMTP mailgate")
    if admission is not None or policy.hooks.implemented("mailgate_connect"):
        return _connect_hooks(greeting, admission, state, channel, policy)
    return greeting


async def _connect_hooks(greeting: Reply, admission: Deferred[Reply | None] | None, state: SessionState,
                         channel: Channel, policy: ListenerPolicy) -> Reply | None:
    """The Admission's answer, then mailgate_connect: the greeting, or a refusal in its place (then the end)."""
    if admission is not None and (refused := await admission) is not None:
        channel.close(refused)
        return None
    if not policy.hooks.implemented("mailgate_connect"):
        return greeting
    try:
        refusal = await policy.hooks.refusal("mailgate_connect", session=state.session)
    except HookFailed:
        refusal = CONNECT_FAILED
    if refusal is None:
        return greeting
    policy.events.emit("refused", reply=refusal, client=state.session.peer)
    channel.close(refusal)
    return None


def helo(argument: str, state: SessionState, channel: Channel, policy: ListenerPolicy) -> Reply | Pending:
    if not printable(argument):
        return HELO_SYNTAX
    return _greeted(argument, False, state, channel, policy)


def ehlo(argument: str, state: SessionState, channel: Channel, policy: ListenerPolicy) -> Reply | Pending:
    if not printable(argument):
        return EHLO_SYNTAX
    return _greeted(argument, True, state, channel, policy)


def _greeted(name: str, esmtp: bool, state: SessionState, channel: Channel,
             policy: ListenerPolicy) -> Reply | Pending:
    """The greeting's answer, once the mailgate_helo plugins (if any) have accepted the name."""
    if policy.hooks.implemented("mailgate_helo"):
        return _ask_plugins(name, esmtp, state, channel, policy)
    return _greet(name, esmtp, state, channel, policy)


async def _ask_plugins(name: str, esmtp: bool, state: SessionState, channel: Channel,
                       policy: ListenerPolicy) -> Reply:
    try:
        refusal = await policy.hooks.refusal("mailgate_helo", session=state.session, name=name)
    except HookFailed:
        return FAILED
    return refusal if refusal is not None else _greet(name, esmtp, state, channel, policy)


def _greet(name: str, esmtp: bool, state: SessionState, channel: Channel, policy: ListenerPolicy) -> Reply:
    state.greet(name, esmtp=esmtp)
    hostname = channel.server_name()  # the SNI name, after STARTTLS with a [tls.sni] pair for it
    if not esmtp:
        return Reply(250, text=hostname)
    return Reply(250, text="\n".join([hostname, *extensions(state, policy)]))


def extensions(state: SessionState, policy: ListenerPolicy) -> list[str]:
    """The EHLO keywords (RFC 5321 4.1.1.1) this connection may use now."""
    names = ["PIPELINING", f"SIZE {policy.config.limits.max_message_size}", "8BITMIME", "ENHANCEDSTATUSCODES",
             "CHUNKING", "SMTPUTF8"]
    if dsn_offered(policy):
        names.append("DSN")
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


def proxy(argument: str, state: SessionState, channel: Channel, policy: ListenerPolicy) -> Reply:
    """A PROXY header from a client outside listen[].proxy: no client may claim another's address.
    Logged, since it may be a balancer the operator has not listed."""
    log.warn("listen[{name}].proxy: a PROXY header from {ip}, which it does not list: refused",
             name=policy.listener.name, ip=state.session.peer)
    return PROXY_REFUSED


def printable(text: str) -> bool:
    """Non-empty printable ASCII: a HELO name is copied into Received: headers."""
    return bool(text) and all(" " <= char <= "~" for char in text)
