"""The workers cells (issue 18, item 5): each cell with server.workers = 1 and = 2 side by side, in one invocation.

Group `workers` (`--cells workers`, or names and globs: `workers-relay-*`):

- `workers-1k-c{c}`: durable 1 KB into Maildirs (the harness's maildir
  cell), workers = 1, then workers = 2, a fresh gateway each.
- `workers-relay-1k-c{c}`, `workers-relay-100k-c{c}`: the relay cell
  (accepted, queued durably, relayed to smtp-sink, delivered = counted at
  the sink and the queue empty) on three servers started together, each
  with its own smtp-sink: mailgate with workers = 1, with workers = 2, and
  the Postfix relay anchor (bench/postfix_relay.py: a private instance,
  `relayhost` = its sink); the runs take turns (A B C, C B A, ...).
- `workers-webhook-1k-c{c}`: the webhook cell (queued, json, signed, to
  bench/receivers.py http), workers = 1 and = 2, runs taking turns.
- `workers-queue-1k-c10`: the queue cell (accept rate, 1 KB c=10, with
  `--queue-size` deferred entries against an empty queue, a fresh start
  per run, ABBA) with workers = 2 on both sides; `queue-1k-c10` is the
  same without workers.

Server CPU is the whole process tree's (master and workers, and what they
reaped); each record also has `server_processes`: CPU per message and
peak RSS for the master and each worker (Postfix: per daemon name).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from bench import postfix_relay
from bench.harness import Context, maildir_cell, queue_cell, queued_cell

GROUP = "workers"
WORKERS = (1, 2)


def durable_cell(conc: int) -> Callable[[Context], None]:
    """Durable 1 KB into Maildirs, server.workers = 1 then 2, in one cell."""
    def run(ctx: Context) -> None:
        for workers in WORKERS:
            maildir_cell(ctx, f"workers-1k-c{conc}", GROUP, f"workers = {workers}", 1024, conc, ctx.args.n1k,
                         server=f"workers = {workers}\n")
    return run


def relay_cell(size: int, conc: int) -> Callable[[Context], None]:
    return lambda ctx: queued_cell(ctx, f"workers-relay-{size // 1024}k-c{conc}", GROUP, "smtp", conc, size,
                                   workers=WORKERS, anchors=[postfix_relay.anchor])


def webhook_cell(conc: int) -> Callable[[Context], None]:
    return lambda ctx: queued_cell(ctx, f"workers-webhook-1k-c{conc}", GROUP, "http", conc, workers=WORKERS)


def full_queue_cell(ctx: Context) -> None:
    queue_cell(ctx, "workers-queue-1k-c10", GROUP, workers=2)


def cells(concs: Iterable[int]) -> list[tuple[str, str, Callable[[Context], None]]]:
    concs = [c for c in concs if c > 1]
    found = [(f"workers-1k-c{c}", GROUP, durable_cell(c)) for c in concs]
    found += [(f"workers-relay-{size // 1024}k-c{c}", GROUP, relay_cell(size, c)) for size in (1024, 102400)
              for c in concs]
    found += [(f"workers-webhook-1k-c{c}", GROUP, webhook_cell(c)) for c in concs]
    return found + [("workers-queue-1k-c10", GROUP, full_queue_cell)]
