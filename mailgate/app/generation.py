"""One configuration in force, a "generation": its plugins and the parts of the sessions built from them.

The listeners' factories build each new session from the newest
generation; a session keeps the one it started in to its end (an SMTP
session holds its ListenerPolicy, a POP3 session its portal), so a reload
never changes the rules under a transaction in flight. The queue outlives
generations and follows the newest (mailgate.app.reload).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.cred.portal import Portal
from twisted.internet.protocol import Factory

from mailgate.accounts.cred import build_portal
from mailgate.accounts.users_file import Accounts
from mailgate.config import GatewayConfig, ListenConfig
from mailgate.core.meters import Meters
from mailgate.hooks.calling import Hooks
from mailgate.inbound.transaction import Deliverer
from mailgate.limits.auth_throttle import AuthThrottle
from mailgate.net.tls_reload import ReloadableTLS
from mailgate.pop3.session import POP3Factory
from mailgate.smtp.factory import SMTPFactory
from mailgate.smtp.policy import ListenerPolicy


@dataclass(frozen=True)
class Shared:
    """What the sessions of every generation share, for the life of the process."""

    reactor: Any
    throttle: AuthThrottle  # AUTH and POP3 failures per IP: a reload must not forgive them
    tls: ReloadableTLS | None  # the certificate in force, replaced in place
    meters: Meters
    admission: Any  # the server's one Admission of connections (mailgate.limits: local or shared)


@dataclass(frozen=True)
class Generation:
    number: int  # 1 at start, one more at each reload that applied
    config: GatewayConfig
    hooks: Hooks  # over this generation's plugin manager
    deliverer: Deliverer
    accounts: Accounts
    portal: Portal
    started: float  # when it took over (reactor seconds)


def new_generation(number: int, config: GatewayConfig, hooks: Hooks, deliverer: Deliverer, shared: Shared,
                   started: float, previous: Generation | None = None) -> Generation:
    """A generation; it keeps the previous one's accounts (and their password cache) if `users.file` is the same."""
    if previous is not None and previous.config.users.file == config.users.file:
        accounts, portal = previous.accounts, previous.portal
    else:
        accounts = Accounts(config.users.file)
        portal = build_portal(accounts, shared.reactor)
    return Generation(number, config, hooks, deliverer, accounts, portal, started)


def listener_factory(listener: ListenConfig, generation: Generation, shared: Shared) -> Factory[Any]:
    """The protocol factory of one `[[listen]]` table (implicit TLS is wrapped around it by the caller)."""
    if listener.protocol != "pop3":
        return SMTPFactory(_smtp_policy(listener, generation, shared))
    config = generation.config
    return POP3Factory(
        accounts=generation.accounts,
        maildir_root=config.store.maildir_root,
        hostname=config.server.hostname,
        tls_options=shared.tls if listener.tls == "starttls" else None,
        plaintext_auth=config.security.plaintext_auth,
        reactor=shared.reactor,
        throttle=shared.throttle,
        portal=generation.portal,
        meters=shared.meters,
        listener=listener.name,
        admission=shared.admission,
    )


def hand_over(factory: Factory, listener: ListenConfig, generation: Generation, shared: Shared) -> None:
    """From now on `factory` builds its sessions from `generation`; the sessions it built keep theirs."""
    config = generation.config
    if isinstance(factory, SMTPFactory):
        factory.policy = _smtp_policy(listener, generation, shared)
    elif isinstance(factory, POP3Factory):
        factory.hostname = config.server.hostname
        factory.plaintext_auth = config.security.plaintext_auth
        factory.portal = generation.portal


def _smtp_policy(listener: ListenConfig, generation: Generation, shared: Shared) -> ListenerPolicy:
    return ListenerPolicy(
        generation.config, listener, generation.hooks, generation.deliverer, shared.reactor, shared.tls,
        portal=generation.portal, throttle=shared.throttle, meters=shared.meters, admission=shared.admission,
    )
