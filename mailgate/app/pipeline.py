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

from mailgate.config import GatewayConfig
from mailgate.core.route import host_port
from mailgate.hooks.calling import Hooks
from mailgate.hooks.events import Events
from mailgate.inbound.transaction import Deliverer
from mailgate.net.dns import MXResolver, make_resolver
from mailgate.outbound.bounces import BounceSender
from mailgate.outbound.retry import RetryPolicy
from mailgate.outbound.scheduler import Scheduler
from mailgate.outbound.smtp_transport import SCHEMES, SMTPTransport
from mailgate.outbound.spool import QueueStore
from mailgate.outbound.spooler import Spooler
from mailgate.outbound.transport import HookTransport, Transport, read_wire_form
from mailgate.store.maildir_writer import MaildirStore


@dataclass
class Pipeline:
    mailboxes: MaildirStore
    spooler: Spooler
    deliverer: Deliverer  # the first configuration's; sessions of later ones get their own (deliverer_for)
    scheduler: Scheduler
    smtp: SMTPTransport  # the one the scheduler delivers through now


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
    parts = queue_parts(config, deliverer, spooler, reactor, run_blocking)
    scheduler = Scheduler(
        spooler, parts.transports,
        HookTransport(hooks, lambda job: run_blocking(read_wire_form, job.message_path)), parts.bounces, parts.policy,
        reactor, run_blocking, delay_warning_seconds=parts.delay_warning_seconds, events=Events(hooks),
    )
    return Pipeline(mailboxes, spooler, deliverer, scheduler, parts.smtp)


def queue_parts(config: GatewayConfig, deliverer: Deliverer, spooler: Spooler, reactor: Any,
                run_blocking: Callable[..., Deferred]) -> QueueParts:
    """The SMTP transport, retry policy and bounces of one configuration; bounces go through `deliverer`."""
    hostname, relay = config.server.hostname, config.relay
    smtp = SMTPTransport(
        reactor, helo_name=hostname, tls_mode=relay.tls,
        resolver=MXResolver(make_resolver(relay.nameservers, reactor)), mx_port=relay.port,
        connection_cache_seconds=relay.connection_cache_seconds,
        smarthost=host_port(relay.smarthost) if relay.smarthost else None,
    )
    policy = RetryPolicy.from_config(relay)
    bounces = BounceSender(hostname, policy.max_queue_seconds, spooler.store.message_path, run_blocking,
                           deliverer.inject)
    return QueueParts(smtp, {scheme: smtp for scheme in SCHEMES}, bounces, policy, relay.delay_warning_seconds)


def deliverer_for(pipeline: Pipeline, hooks: Hooks, config: GatewayConfig) -> Deliverer:
    """A delivery transaction over the pipeline's store and spool, asking `hooks` (one configuration's)."""
    return Deliverer(pipeline.mailboxes, pipeline.spooler, hooks, config.server.hostname)
