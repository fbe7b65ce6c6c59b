"""Wiring the message's path: store, spool, delivery transaction, transports, scheduler, bounces.

Each part gets what it needs at construction, in dependency order; the one
loop in the path (bounces are delivered like any accepted message, and
accepted messages feed the scheduler) is closed by the scheduler listening
to the spooler, not by setting attributes afterwards.

The store, the spool and the scheduler live as long as the process; what
the scheduler delivers through (the SMTP transport, retry policy and
bounces) is made from the configuration by `queue_parts`, once at start
and again at each reload (mailgate.app.reload).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mailgate.app.preflight import smarthost_password
from mailgate.config import GatewayConfig
from mailgate.core.route import host_port
from mailgate.hooks.calling import Hooks
from mailgate.hooks.events import Events
from mailgate.inbound.transaction import Deliverer
from mailgate.mailauth.dkim_sign import Signer
from mailgate.net.dns import OUTBOUND_DNS_TIMEOUTS, MXResolver, make_resolver
from mailgate.net.dnssec import SecureResolver
from mailgate.net.tls_client import TrustRoots
from mailgate.outbound.bounces import BounceSender
from mailgate.outbound.dane import DANE
from mailgate.outbound.mta_sts import MTASTS
from mailgate.outbound.pools import Pools
from mailgate.outbound.retry import RetryPolicy
from mailgate.outbound.shaping import worker_share
from mailgate.outbound.scheduler import Scheduler
from mailgate.outbound.smtp_dialogue import Credentials
from mailgate.outbound.smtp_transport import SCHEMES, SMTPTransport
from mailgate.outbound.spool import QueueStore
from mailgate.outbound.spooler import Spooler
from mailgate.outbound.tls_policy import TLSPolicy
from mailgate.outbound.transport import HookTransport, Transport, read_wire_form
from mailgate.store.maildir_writer import MaildirStore

log = Logger()


@dataclass
class Pipeline:
    mailboxes: MaildirStore
    spooler: Spooler
    deliverer: Deliverer  # the first configuration's; sessions of later ones get their own (deliverer_for)
    scheduler: Scheduler
    smtp: SMTPTransport  # the one the scheduler delivers through now
    bounces: BounceSender  # the current configuration's: success reports of later sessions' deliverers too


@dataclass(frozen=True)
class QueueParts:
    """What the scheduler delivers through, made from one configuration."""

    smtp: SMTPTransport
    transports: Mapping[str, Transport]
    bounces: BounceSender
    policy: RetryPolicy
    delay_warning_seconds: float


def build_pipeline(config: GatewayConfig, hooks: Hooks, reactor: Any,
                   run_blocking: Callable[..., Deferred]) -> Pipeline:
    """Everything between a session's accepted message and its last delivery attempt.

    `hooks` is the queue's: it routes bounces, delivers plugins' routes
    and tells the queue's events (a reload points it at the new plugins).
    """
    mailboxes = MaildirStore(config.store.maildir_root, config.server.hostname, run_blocking)
    spooler = Spooler(QueueStore(os.path.join(config.server.state_dir, "queue")), run_blocking, reactor.seconds)
    deliverer = Deliverer(mailboxes, spooler, hooks, config.server.hostname)
    parts = queue_parts(config, hooks, deliverer, spooler, reactor, run_blocking)
    scheduler = Scheduler(
        spooler, parts.transports,
        HookTransport(hooks, lambda job: run_blocking(read_wire_form, job.message_path)), parts.bounces, parts.policy,
        reactor, run_blocking, delay_warning_seconds=parts.delay_warning_seconds, events=Events(hooks),
    )
    return Pipeline(mailboxes, spooler, deliverer, scheduler, parts.smtp, parts.bounces)


def queue_parts(config: GatewayConfig, hooks: Hooks, deliverer: Deliverer, spooler: Spooler, reactor: Any,
                run_blocking: Callable[..., Deferred]) -> QueueParts:
    """The SMTP transport, retry policy and bounces of one configuration; bounces go through `deliverer`,
    which also sends its NOTIFY=SUCCESS reports through them. `hooks` (the queue's) choose pools."""
    hostname, relay = config.server.hostname, config.relay
    credentials = (Credentials(relay.smarthost_username, smarthost_password(config))
                   if relay.smarthost_username else None)
    resolver = MXResolver(make_resolver(relay.nameservers, reactor, timeouts=OUTBOUND_DNS_TIMEOUTS))
    smtp = SMTPTransport(
        reactor, helo_name=hostname, tls_mode=relay.tls, resolver=resolver,
        mx_port=relay.port, connection_cache_seconds=relay.connection_cache_seconds,
        smarthost=host_port(relay.smarthost) if relay.smarthost else None,
        smarthost_credentials=credentials, pools=Pools(relay.pool, hostname, hooks),
        relay=worker_share(relay, config.server.workers),
        tls_policy=tls_policy(config, resolver, reactor, run_blocking),
    )
    policy = RetryPolicy.from_config(relay)
    signer = Signer(config.dkim)  # DSNs are signed with server.hostname's keys (SPEC: "every DSN mailgate writes")
    bounces = BounceSender(hostname, policy.max_queue_seconds, spooler.store.message_path, run_blocking,
                           deliverer.inject, sign=lambda report: signer.fields(report, domain=hostname))
    deliverer.reports = bounces  # NOTIFY=SUCCESS for what is delivered while the client waits
    return QueueParts(smtp, {scheme: smtp for scheme in SCHEMES}, bounces, policy, relay.delay_warning_seconds)


def deliverer_for(pipeline: Pipeline, hooks: Hooks, config: GatewayConfig) -> Deliverer:
    """A delivery transaction over the pipeline's store and spool, asking `hooks` (one configuration's)."""
    deliverer = Deliverer(pipeline.mailboxes, pipeline.spooler, hooks, config.server.hostname)
    deliverer.reports = pipeline.bounces
    return deliverer


def tls_policy(config: GatewayConfig, resolver: MXResolver, reactor: Any,
               run_blocking: Callable[..., Deferred]) -> TLSPolicy:
    """relay.tls, relay.smarthost_tls, and MTA-STS (relay.mta_sts) and DANE (relay.dane) where on."""
    relay = config.relay
    trust = TrustRoots(relay.mta_sts_ca_file)
    sts = (MTASTS(reactor, resolver, os.path.join(config.server.state_dir, "mta-sts"), run_blocking, trust,
                  relay.mta_sts_port) if relay.mta_sts else None)
    dane = DANE(SecureResolver(relay.nameservers, reactor)) if relay.dane else None
    if dane is not None:
        Deferred.fromCoroutine(dane.probe()).addErrback(lambda f: log.failure("relay.dane: probe failed", f))
    return TLSPolicy(relay.tls, smarthost_tls=relay.smarthost_tls, sts=sts, trust=trust, dane=dane)
