"""The workers tables of a results directory (issue 18, item 5): the targets, then every cell side by side.

Rows are the `workers` group's (bench/scaling.py): mailgate with
server.workers = 1 and = 2, and the Postfix relay anchor
(bench/postfix_relay.py) in the relay cells. Server CPU per message counts
every process of the server's tree; the per-process columns split it (the
master, each worker; Postfix by daemon name) and give each one's peak RSS.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

from bench.report import Anchors, fmt, group, med, spread

GROUP = "workers"
KUMOMTA_100K_2CPU = 750.0  # msgs/s: KumoMTA's stated figure for 2 CPUs, issue 18 item 5
WORKERS = re.compile(r"workers = (\d+)")


def workers_of(row: dict) -> int | None:
    found = WORKERS.search(row.get("variant", ""))
    return int(found.group(1)) if found and row.get("server") != "postfix" else None


def cell_rows(rows: list[dict], prefix: str) -> tuple[str, list[dict]]:
    """The rows of `prefix`-c{c} with the highest c measured (c=50 in a full run)."""
    cells = {r["cell"]: r.get("conc", 0) for r in rows if re.fullmatch(re.escape(prefix) + r"-c\d+", r["cell"])}
    if not cells:
        return f"{prefix}-c50", []
    cell = max(cells, key=lambda name: cells[name])
    return cell, [r for r in rows if r["cell"] == cell]


def rate(rows: list[dict], workers: int | None, key: str = "delivered_msgs_s", **where: Any) -> float | None:
    return med(r.get(key) for r in rows if workers_of(r) == workers and all(r.get(k) == v for k, v in where.items()))


def table(lines: list[str], rows: list[dict], anchors: Anchors) -> None:
    mine = [r for r in rows if r.get("group") == GROUP]
    timed = [r for r in mine if "delivered_msgs_s" in r]
    if not timed:
        return
    targets(lines, timed, anchors)
    side_by_side(lines, timed)
    notes = [r["note"] for r in mine if r.get("note")]
    if notes:
        lines.append("Not measured: " + "; ".join(f"{r['cell']}: {r['note']}" for r in mine if r.get("note")) + ".")
        lines.append("")


def targets(lines: list[str], timed: list[dict], anchors: Anchors) -> None:
    add = lines.append
    add("### Workers (issue 18, item 5): the targets\n")
    add("| target | workers = 1 | workers = 2 | reference | workers = 2 ÷ reference | met (workers = 2)? |")
    add("|---|---|---|---|---|---|")

    def line(what: str, one: float | None, two: float | None, ref: float | None, goal: float, ref_text: str,
             higher: bool = True) -> None:
        if two is None or not ref:
            add(f"| {what} | {fmt(one)} | {fmt(two)} | {ref_text} | n/a | not measured |")
            return
        ratio = two / ref
        met = ratio >= goal if higher else ratio <= goal
        add(f"| {what} | {fmt(one)} | {fmt(two)} | {ref_text} | {ratio:.2f}× | {'**yes**' if met else '**no**'} |")

    cell, rs = cell_rows(timed, "workers-1k")
    c = cell.rsplit("-c", 1)[1]
    one, two = rate(rs, 1), rate(rs, 2)
    line(f"durable 1 KB c={c}: workers = 2 ≥ 1.6× workers = 1", one, two, one, 1.6,
         f"workers = 1: {fmt(one)}")
    postfix = anchors.delivered("postfix", 1024, int(c))
    source = "this run" if anchors.rows("postfix", 1024, int(c)) else "ANCHORS.md"
    line(f"durable 1 KB c={c}: ≥ 3× Postfix", one, two, postfix, 3.0, f"Postfix {fmt(postfix)} ({source})")

    cell, rs = cell_rows(timed, "workers-relay-1k")
    c = cell.rsplit("-c", 1)[1]
    one, two = rate(rs, 1), rate(rs, 2)
    line(f"relay 1 KB c={c}: ≥ 600 msgs/s", one, two, 600.0, 1.0, "600")
    relay = med(r["delivered_msgs_s"] for r in rs if r.get("server") == "postfix")
    line(f"relay 1 KB c={c}: ≥ 2× Postfix's relay", one, two, relay, 2.0,
         f"Postfix relay {fmt(relay)} (this run)" if relay else "Postfix relay: not run")

    cell, rs = cell_rows(timed, "workers-relay-100k")
    c = cell.rsplit("-c", 1)[1]
    line(f"relay 100 KB c={c}: ≥ KumoMTA's 2-CPU figure", rate(rs, 1), rate(rs, 2), KUMOMTA_100K_2CPU, 1.0,
         f"~{KUMOMTA_100K_2CPU:.0f} (stated)")

    cell, rs = cell_rows(timed, "workers-webhook-1k")
    c = cell.rsplit("-c", 1)[1]
    line(f"webhook (queued, json, signed) c={c}: ≥ 500 msgs/s", rate(rs, 1), rate(rs, 2), 500.0, 1.0, "500")

    rs = [r for r in timed if r["cell"] == "workers-queue-1k-c10"]
    full = rate([r for r in rs if r.get("queue_size")], 2, "accepted_msgs_s")
    empty = rate([r for r in rs if not r.get("queue_size")], 2, "accepted_msgs_s")
    size = next((r["queue_size"] for r in rs if r.get("queue_size")), 100_000)
    line(f"accept rate (1 KB c=10) with {size:,} deferred within 10 % of an empty queue", None, full, empty, 0.9,
         f"empty queue, workers = 2: {fmt(empty)}")
    add("")
    add("- msgs/s, medians: delivered (into the Maildirs; for relay and webhook: counted at the far end, queue "
        "empty), except the last row (accepted: the client had every 250). The Postfix relay anchor ran in the "
        "same cell as mailgate, its runs taking turns with mailgate's.")
    add("")


def side_by_side(lines: list[str], timed: list[dict]) -> None:
    add = lines.append
    add("### Workers: every cell side by side (median (min–max) of the runs)\n")
    add("| cell | server | client | N | runs | accepted msgs/s | delivered msgs/s | server CPU ms/msg (all processes) | "
        "CPU ms/msg by process | peak RSS MiB by process | RSS sum MiB | client CPU ms/msg | far end CPU ms/msg | "
        "other work, % CPU | failed runs |")
    add("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (cell, variant), rs in group(timed, "cell", "variant").items():
        cpu, rss = by_process(rs)
        add(f"| {cell} | {variant} | {rs[0].get('client')} | {rs[0]['n']} | {len(rs)} | "
            f"{spread([r['accepted_msgs_s'] for r in rs])} | {spread([r['delivered_msgs_s'] for r in rs])} | "
            f"{spread([r['server_cpu_ms_per_msg'] for r in rs], '%.2f')} | {cpu} | {rss} | "
            f"{max(r.get('peak_rss_kb_sum') or r['peak_rss_kb'] for r in rs) / 1024:.0f} | "
            f"{spread([r.get('client_cpu_ms_per_msg') for r in rs], '%.2f')} | "
            f"{spread([r.get('far_cpu_ms_per_msg') for r in rs], '%.2f') if 'far_cpu_ms_per_msg' in rs[0] else ''} | "
            f"{spread([r.get('other_cpu_percent') for r in rs])} | {sum(1 for r in rs if r['failed']) or ''} |")
    add("")
    queue = [r for r in timed if r["cell"] == "workers-queue-1k-c10"]
    if queue:
        starts = "; ".join(f"{variant}: accepting after {spread([r.get('listening_s') for r in rs], '%.2f')} s, "
                           f"queue resumed after {spread([r.get('resumed_s') for r in rs], '%.2f')} s"
                           for (variant,), rs in group(queue, "variant").items())
        add(f"- workers-queue-1k-c10 start-up (a fresh start per run, order ABBA): {starts}.")
    add("- *server CPU* is utime + stime (+ what they reaped) of every process of the server's tree from /proc; *by "
        "process* splits it (medians): mailgate's master and each worker, Postfix's daemons by name (×count: "
        "processes seen at the end of the run; those that exited during it are in the master's share). "
        "*Peak RSS* is each process's VmHWM (the largest of a name); the sum counts a page shared by several processes once for each.")
    add("")


def by_process(rs: list[dict]) -> tuple[str, str]:
    """'master 0.80, worker 0 3.20, ...' (CPU ms/msg, medians) and 'master 64, worker 0 67, ...' (MiB, max)."""
    cpu: OrderedDict[str, list[float]] = OrderedDict()
    rss: dict[str, int] = {}
    count: dict[str, int] = {}
    for r in rs:
        for p in sorted(r.get("server_processes") or [], key=lambda p: p["name"]):
            cpu.setdefault(p["name"], []).append(p["cpu_ms_per_msg"])
            rss[p["name"]] = max(rss.get(p["name"], 0), p["peak_rss_kb"])
            count[p["name"]] = max(count.get(p["name"], 0), p["processes"])
    order = sorted(cpu, key=lambda name: (name != "master", name))

    def label(name: str) -> str:
        return name + (f" ×{count[name]}" if count[name] > 1 else "")

    return (", ".join(f"{label(n)} {med(cpu[n]):.2f}" for n in order),
            ", ".join(f"{label(n)} {rss[n] / 1024:.0f}" for n in order))
