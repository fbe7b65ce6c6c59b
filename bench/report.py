"""Markdown from a results directory: mailgate's cells, the anchors beside them, the targets of issue 7.

A results directory holds meta.json, mailgate.jsonl (one line per run) and,
when the anchors ran in the same invocation, anchors/ (anchors.sh's RES:
smtp.jsonl, pop3.jsonl, limits.jsonl). Without anchors/ the ratios are
taken against the medians printed in ANCHORS.md (2026-11-23), and the
summary says so.
"""

from __future__ import annotations

import json
import statistics
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# Medians from /work/shared/bench-anchors/ANCHORS.md (2026-11-23, same machine kind):
# delivered msgs/s and server CPU ms/msg per (size, concurrency); POP3 figures.
ANCHORS_MD: dict[str, dict[tuple[int, int], tuple[float, float]]] = {
    "postfix": {(1024, 1): (235, 4.46), (1024, 10): (351, 4.01), (1024, 50): (277, 4.99),
                (102400, 1): (191, 5.84), (102400, 10): (284, 5.22), (102400, 50): (236, 5.44)},
    "haraka-maildir-fsync": {(1024, 1): (162, 4.86), (1024, 10): (315, 3.87), (1024, 50): (397, 3.23),
                             (102400, 1): (98, 9.26), (102400, 10): (136, 8.56), (102400, 50): (148, 8.90)},
    "aiosmtpd-fsync-thread": {(1024, 1): (199, 3.83), (1024, 10): (302, 3.79), (1024, 50): (310, 3.66),
                              (102400, 1): (92, 9.38), (102400, 10): (112, 9.48), (102400, 50): (120, 8.50)},
    "aiosmtpd-fsync-inline": {(1024, 1): (222, 3.35), (1024, 10): (252, 3.29), (1024, 50): (294, 2.85),
                              (102400, 1): (98, 8.80), (102400, 10): (115, 7.66), (102400, 50): (127, 7.18)},
    "twistd-mail": {(1024, 1): (323, 2.44), (1024, 10): (482, 2.04), (1024, 50): (517, 1.89),
                    (102400, 1): (135, 6.64), (102400, 10): (219, 4.50), (102400, 50): (236, 4.18)},
}
ANCHORS_MD_POP3 = {"dovecot": {"retr": 1592, "cold": 1.821, "warm": 0.224},
                   "twistd-mail": {"retr": 23, "cold": 0.264, "warm": 0.273}}
ANCHORS_MD_LIMITS = "write+fsync+rename+dir fsync 539/s; group commit (syncfs per 10) 1074/s; no fsync 1242/s"
SERVER_NAMES = OrderedDict([
    ("postfix", "Postfix 3.7"), ("haraka-maildir-fsync", "Haraka 3.3 (fsync plugin)"),
    ("aiosmtpd-fsync-thread", "aiosmtpd 1.4 (fsync in thread)"), ("aiosmtpd-fsync-inline", "aiosmtpd 1.4 (fsync inline)"),
    ("aiosmtpd-stock-Mailbox", "aiosmtpd 1.4 (stock Mailbox)"), ("twistd-mail", "`twistd mail` (no fsync)"),
])


def load(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip().startswith("{")]


def med(values: Iterable[Any]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def spread(values: Iterable[Any], fmt: str = "%.0f") -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return fmt % values[0]
    return f"{fmt % statistics.median(values)} ({fmt % min(values)}–{fmt % max(values)})"


def group(rows: list[dict], *keys: str) -> OrderedDict[tuple, list[dict]]:
    grouped: OrderedDict[tuple, list[dict]] = OrderedDict()
    for row in rows:
        grouped.setdefault(tuple(row.get(k) for k in keys), []).append(row)
    return grouped


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a and b else "n/a"


class Anchors:
    """The anchors of this run (anchors/), or ANCHORS.md's medians where this run has none.

    A cell of this run counts only if its runs delivered (a server that
    failed here falls back to ANCHORS.md, marked with a dagger).
    """

    def __init__(self, directory: Path) -> None:
        self.smtp = [r for r in load(directory / "smtp.jsonl")
                     if r.get("client") == "smtp-source" and r.get("delivered_msgs_s")]
        self.failed = sorted({(r["label"], r["size"], r["conc"]) for r in load(directory / "smtp.jsonl")
                              if r.get("client") == "smtp-source" and not r.get("delivered_msgs_s")})
        self.pop3 = load(directory / "pop3.jsonl")
        self.limits = load(directory / "limits.jsonl")
        self.same_run = bool(self.smtp)
        self.pop3_same_run = bool(self.pop3)
        self.fallbacks: set[str] = set()

    def rows(self, label: str, size: int, conc: int) -> list[dict]:
        return [r for r in self.smtp if r["label"] == label and r["size"] == size and r["conc"] == conc]

    def _md(self, label: str, size: int, conc: int, index: int) -> float | None:
        value = ANCHORS_MD.get(label, {}).get((size, conc), (None, None))[index]
        if value is not None and self.same_run:
            self.fallbacks.add(f"{label} {size // 1024} KB c={conc}")
        return value

    def delivered(self, label: str, size: int, conc: int) -> float | None:
        rows = self.rows(label, size, conc)
        return med(r["delivered_msgs_s"] for r in rows) if rows else self._md(label, size, conc, 0)

    def delivered_text(self, label: str, size: int, conc: int) -> str:
        rows = self.rows(label, size, conc)
        if rows:
            return spread([r["delivered_msgs_s"] for r in rows])
        value = self._md(label, size, conc, 0)
        return "–" if value is None else f"{value:.0f}" + (" †" if self.same_run else "")

    def cpu(self, label: str, size: int, conc: int) -> float | None:
        rows = self.rows(label, size, conc)
        return med(r["server_cpu_ms_per_msg"] for r in rows) if rows else self._md(label, size, conc, 1)

    def rss(self, label: str) -> str:
        rows = [r for r in self.smtp if r["label"] == label]
        if not rows:
            return ""
        procs = max(r.get("server_procs", 1) for r in rows)
        return f"{max(r['peak_rss_kb_max'] for r in rows) / 1024:.0f} MiB" + (f" ({procs} procs)" if procs > 1 else "")

    def labels(self) -> list[str]:
        present = list(OrderedDict.fromkeys(r["label"] for r in self.smtp))
        known = [k for k in SERVER_NAMES if k in present or k in ANCHORS_MD]
        return known + [k for k in present if k not in SERVER_NAMES]

    def _pop3_rows(self, label: str, what: str) -> list[dict]:
        if what == "retr":
            return [r for r in self.pop3 if r["label"] == label and r["mode"] == "full" and r.get("msgs_per_s_retr")]
        return [r for r in self.pop3 if r["label"] == label and r["mode"] == "scale" and r.get("phase") == what]

    def _pop3_values(self, label: str, what: str) -> list[float]:
        key = "msgs_per_s_retr" if what == "retr" else "total_s"
        return [r[key] for r in self._pop3_rows(label, what)]

    def pop3_value(self, label: str, what: str) -> float | None:
        values = self._pop3_values(label, what)
        if values:
            return med(values)
        if self.pop3_same_run:
            self.fallbacks.add(f"{label} POP3 {what}")
        return ANCHORS_MD_POP3.get(label, {}).get(what)

    def pop3_text(self, label: str, what: str, fmt: str) -> str:
        values = self._pop3_values(label, what)
        if values:
            return spread(values, fmt)
        value = self.pop3_value(label, what)
        return "–" if value is None else fmt % value + (" †" if self.pop3_same_run else "")


OWN_TABLES = {"mailauth", "workers", "error"}  # groups whose tables need neither issue 7's targets nor its table


def summarize(out: Path) -> str:
    from bench import workers_report  # it builds on this module's helpers

    meta = json.loads((out / "meta.json").read_text()) if (out / "meta.json").exists() else {}
    rows = load(out / "mailgate.jsonl")
    anchors = Anchors(out / "anchors")
    lines: list[str] = []
    add = lines.append
    m = meta.get("machine", {})

    add(f"## {meta.get('label', out.name)}: {meta.get('started', '?')}")
    add("")
    add(f"- command: `{meta.get('command', '?')}` (in `{meta.get('cwd', '?')}`), results in `{out}`")
    if meta.get("anchors"):
        add(f"- anchors, same invocation, after the mailgate cells: `{meta['anchors']['command']}` "
            f"(exit {meta['anchors']['rc']}, finished {meta['anchors']['finished']})")
    add(f"- machine: {m.get('cores', '?')} × {m.get('cpu', '?')}, {m.get('memory', '?')} RAM, kernel {m.get('kernel', '?')}, "
        f"Debian {m.get('debian', '?')}, fs `{m.get('fs', '?')}`; Python {m.get('python', '?')}, Twisted {m.get('twisted', '?')}, "
        f"postfix {m.get('postfix (smtp-source)', '?')}; CPU steal during the mailgate cells: {meta.get('steal_percent', '?')} %")
    add(f"- code measured: {meta.get('code', 'working tree')}; checkout at commit {m.get('commit', '?')}, uncommitted "
        f"changes under mailgate/ then: {m.get('mailgate_dirty', '?')}; sha256 of the mailgate/**/*.py run: "
        f"{m.get('mailgate_sha256', '?')}")
    add(f"- load: {meta.get('client', '?')} for the one-message-per-connection cells; {meta.get('reps', '?')} runs per cell, "
        f"N = {meta.get('n1k', '?')} (1 KB) / {meta.get('n100k', '?')} (100 KB); relay far end: {meta.get('smtp_sink', '?')}")
    if anchors.same_run:
        add("- anchors: **measured in this invocation** (anchors.sh), so the ratios are side by side")
    else:
        add("- anchors: **not run in this invocation**: the anchor figures and ratios below use the medians printed in "
            "/work/shared/bench-anchors/ANCHORS.md (2026-11-23, same machine kind); they are not side by side")
    codes = list(OrderedDict.fromkeys(r.get("code") for r in rows if r.get("code")))
    if len(codes) > 1:
        by_code = {c: sorted({r["cell"] for r in rows if r.get("code") == c}) for c in codes}
        add("- **the working tree changed during the run**: " + "; ".join(
            f"code {c}: {', '.join(cells)}" for c, cells in by_code.items()))
    others = [r.get("other_cpu_percent") for r in rows if r.get("other_cpu_percent") is not None]
    if others:
        unquiet = sum(1 for r in rows if "waited_for_quiet_s" in r and r["waited_for_quiet_s"] is None)
        add(f"- CPU used by other work during the timed mailgate runs (not the server, the load client or the "
            f"harness; the machine is shared and other sessions' processes are invisible here): median "
            f"{med(others):.1f} %, max {max(others):.1f} % of all CPUs; each run waited for under "
            f"{meta.get('quiet', '?')} % first" + (f" ({unquiet} runs never got quiet and ran anyway)" if unquiet else ""))
    if meta.get("quick"):
        add("- **--quick**: tiny N, one run: a check that the harness works, not a figure")
    add("")

    if anchors.same_run or any(r.get("group") not in OWN_TABLES for r in rows):
        targets(lines, rows, anchors)  # issue 7's targets: noise beside a run of the mail-authentication cells alone
        smtp_table(lines, rows, anchors)
    detail_table(lines, rows)
    metrics_table(lines, rows)
    extras_table(lines, rows)
    workers_report.table(lines, rows, anchors)
    mailauth_table(lines, rows)
    pop3_table(lines, rows, anchors)
    idle_table(lines, rows)
    queue_table(lines, rows, meta)
    if anchors.fallbacks:
        add("† not measured in this run (the server failed or was not run), so taken from ANCHORS.md: "
            + ", ".join(sorted(anchors.fallbacks)) + ".")
        add("")
    if anchors.failed:
        add("Anchor cells of this run that failed (no delivery within smtp_bench.py's timeout): "
            + ", ".join(f"{label} {size // 1024} KB c={conc}" for label, size, conc in anchors.failed) + ".")
        add("")
    errors = [r for r in rows if r.get("group") == "error" or r.get("log_errors")]
    if errors:
        add("### Errors\n")
        for r in errors:
            add(f"- {r['cell']}: {r.get('error') or r.get('log_errors')}")
        add("")
    return "\n".join(lines).rstrip() + "\n"


def mailgate_cell(rows: list[dict], size: int, conc: int) -> list[dict]:
    return [r for r in rows if r.get("group") == "smtp" and r.get("size") == size and r.get("conc") == conc]


def targets(lines: list[str], rows: list[dict], anchors: Anchors) -> None:
    add = lines.append
    add("### Targets (issue 7, item 2)\n")
    add("| target | mailgate (median) | reference (median) | ratio | met? |")
    add("|---|---|---|---|---|")

    def line(what: str, mine: float | None, ref: float | None, goal: float, higher: bool = True,
             unit: str = "", ref_text: str | None = None) -> None:
        if mine is None or ref is None:
            add(f"| {what} | {fmt(mine, unit)} | {ref_text or fmt(ref, unit)} | n/a | not measured |")
            return
        r = mine / ref
        met = r >= goal if higher else r <= goal
        add(f"| {what} | {fmt(mine, unit)} | {ref_text or fmt(ref, unit)} | {r:.2f}× | {'**yes**' if met else '**no**'} |")

    d1k50 = med(r["delivered_msgs_s"] for r in mailgate_cell(rows, 1024, 50))
    line("1 KB c=50 delivered ≥ 1.5× Haraka", d1k50, anchors.delivered("haraka-maildir-fsync", 1024, 50), 1.5,
         unit=" msgs/s")
    line("1 KB c=50 delivered ≥ 2× Postfix", d1k50, anchors.delivered("postfix", 1024, 50), 2.0, unit=" msgs/s")
    d100k50 = med(r["delivered_msgs_s"] for r in mailgate_cell(rows, 102400, 50))
    line("100 KB c=50 delivered ≥ 1.25× Postfix", d100k50, anchors.delivered("postfix", 102400, 50), 1.25,
         unit=" msgs/s")
    for conc in sorted({r["conc"] for r in rows if r.get("group") == "smtp" and r.get("size") == 1024}):
        cpu = med(r["server_cpu_ms_per_msg"] for r in mailgate_cell(rows, 1024, conc))
        line(f"CPU per 1 KB message ≤ `twistd mail`'s, c={conc}", cpu, anchors.cpu("twistd-mail", 1024, conc), 1.0,
             higher=False, unit=" ms")
    retr = med(r["value"] for r in rows if r.get("cell") == "pop3-retr")
    line("POP3 RETR ≥ Dovecot", retr, anchors.pop3_value("dovecot", "retr"), 1.0, unit=" msgs/s")
    warm = [r for r in rows if r.get("cell") == "pop3-uidl" and r["variant"].endswith("warm")]
    n_uidl = warm[0]["variant"].split()[0] if warm else "20,000"
    line(f"login+UIDL on {n_uidl} ≤ 0.3 s warm", med(r["value"] for r in warm), 0.3, 1.0, higher=False, unit=" s",
         ref_text="0.3 s (Dovecot " + fmt(anchors.pop3_value("dovecot", "warm"), " s") + ")")
    idle = [r for r in rows if r.get("cell") == "idle" and r.get("kb_per_session")]
    line("≤ 50 KB RSS per idle SMTP session", idle[0]["kb_per_session"][0] if idle else None, 50.0, 1.0,
         higher=False, unit=" KB")
    empty = med(r["accepted_msgs_s"] for r in rows if r.get("group") == "queue" and r["variant"] == "empty queue")
    full_rows = [r for r in rows if r.get("group") == "queue" and r["variant"] != "empty queue"]
    full = med(r["accepted_msgs_s"] for r in full_rows)
    label = full_rows[0]["variant"] if full_rows else "100,000 deferred"
    line(f"accept rate with {label} within 10 % of an empty queue (1 KB c=10)", full, empty, 0.9,
         unit=" msgs/s")
    add("")


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:.0f}{unit}"
    if abs(value) >= 10:
        return f"{value:.1f}{unit}"
    return f"{value:.2f}{unit}" if abs(value) >= 1 else f"{value:.3f}{unit}"


def smtp_table(lines: list[str], rows: list[dict], anchors: Anchors) -> None:
    add = lines.append
    smtp = [r for r in rows if r.get("group") == "smtp"]
    concs = sorted({r["conc"] for r in smtp}) or [1, 10, 50]
    add("### SMTP into a Maildir, side by side (delivered msgs/s, median (min–max); CPU ms per message, median)\n")
    head = [f"1 KB c={c}" for c in concs] + [f"100 KB c={c}" for c in concs]
    add("| server | durable | " + " | ".join(head) + " | CPU ms/msg 1 KB (c=" + "/".join(map(str, concs))
        + ") | CPU ms/msg 100 KB | peak RSS |")
    add("|---|---|" + "---|" * len(head) + "---|---|---|")
    cells = [spread([r["delivered_msgs_s"] for r in mailgate_cell(rows, s, c)]) if mailgate_cell(rows, s, c) else "–"
             for s in (1024, 102400) for c in concs]
    cpu1 = "/".join(fmt(med(r["server_cpu_ms_per_msg"] for r in mailgate_cell(rows, 1024, c))) for c in concs)
    cpu100 = "/".join(fmt(med(r["server_cpu_ms_per_msg"] for r in mailgate_cell(rows, 102400, c))) for c in concs)
    rss = max((r.get("peak_rss_kb") or 0 for r in smtp), default=0) / 1024
    add("| **mailgate** | yes | " + " | ".join(f"**{c}**" for c in cells) + f" | {cpu1} | {cpu100} | {rss:.0f} MiB |")
    durable = {"twistd-mail": "**no**", "aiosmtpd-stock-Mailbox": "file only"}
    for label in anchors.labels():
        cells = [anchors.delivered_text(label, s, c) for s in (1024, 102400) for c in concs]
        cpu1 = "/".join(fmt(anchors.cpu(label, 1024, c)) for c in concs)
        cpu100 = "/".join(fmt(anchors.cpu(label, 102400, c)) for c in concs)
        add(f"| {SERVER_NAMES.get(label, label)} | {durable.get(label, 'yes')} | " + " | ".join(cells)
            + f" | {cpu1} | {cpu100} | {anchors.rss(label)} |")
    add("")
    if smtp:
        add("mailgate ÷ anchor, delivered msgs/s (medians):\n")
        add("| anchor | " + " | ".join(head) + " |")
        add("|---|" + "---|" * len(head))
        for label in anchors.labels():
            cells = [ratio(med(r["delivered_msgs_s"] for r in mailgate_cell(rows, s, c)), anchors.delivered(label, s, c))
                     for s in (1024, 102400) for c in concs]
            add(f"| {SERVER_NAMES.get(label, label)} | " + " | ".join(cells) + " |")
        add("")
    if anchors.limits:
        add("Disk and loopback limits measured by the anchors in this run:\n")
        add("| test | ops/s median (min–max) |")
        add("|---|---|")
        for rs in group(anchors.limits, "test", "size", "batch", "fsync", "syncfs_per_batch").values():
            r0 = rs[0]
            if r0["test"] == "tcp_echo_roundtrip":
                add(f"| loopback TCP round trip, {r0['size']} B | {spread([r['roundtrips_per_s'] for r in rs])} |")
                continue
            what = ("no fsync (not durable)" if not r0["fsync"] else f"one syncfs() per {r0['batch']} files"
                    if r0.get("syncfs_per_batch") else "fsync file + dir each" if r0["batch"] == 1
                    else f"fsync each file, dir once per {r0['batch']}")
            add(f"| Maildir write loop, {r0['size']} B, {what} | {spread([r['ops_per_s'] for r in rs])} |")
        add("")
    else:
        add(f"Disk limits (ANCHORS.md): {ANCHORS_MD_LIMITS}.\n")


def detail_table(lines: list[str], rows: list[dict]) -> None:
    add = lines.append
    timed = [r for r in rows if "delivered_msgs_s" in r and r.get("group") in ("smtp",)]
    if not timed:
        return
    add("### mailgate, every SMTP cell (median (min–max) of the runs)\n")
    add("| cell | client | N | runs | accepted msgs/s | delivered msgs/s | server CPU ms/msg | client CPU ms/msg "
        "| peak RSS MiB | other work, % CPU | failed runs |")
    add("|---|---|---|---|---|---|---|---|---|---|---|")
    for (cell, variant), rs in group(timed, "cell", "variant").items():
        add(f"| {cell} | {rs[0].get('client')} | {rs[0]['n']} | {len(rs)} | "
            f"{spread([r['accepted_msgs_s'] for r in rs])} | {spread([r['delivered_msgs_s'] for r in rs])} | "
            f"{spread([r['server_cpu_ms_per_msg'] for r in rs], '%.2f')} | "
            f"{spread([r.get('client_cpu_ms_per_msg') for r in rs], '%.2f')} | "
            f"{max(r['peak_rss_kb'] for r in rs) / 1024:.0f} | {spread([r.get('other_cpu_percent') for r in rs])} | "
            f"{sum(1 for r in rs if r['failed']) or ''} |")
    commands = list(OrderedDict.fromkeys(r.get("command") for r in timed if r.get("command")))
    add("")
    add("Load commands (the port is the gateway's, picked by the kernel): " + "; ".join(f"`{c}`" for c in commands[:2])
        + (" …" if len(commands) > 2 else ""))
    add("")


def metrics_table(lines: list[str], rows: list[dict]) -> None:
    """`--metrics both`: each smtp cell with `[metrics] endpoint` off and on, from the same invocation."""
    on = [r for r in rows if r.get("group") == "metrics" and "delivered_msgs_s" in r]
    if not on:
        return
    add = lines.append
    add("### Metrics off and on (`--metrics both`: two gateways, runs alternated; median (min–max))\n")
    add("| cell | runs | delivered msgs/s, off | delivered msgs/s, on | on ÷ off | server CPU ms/msg, off | "
        "server CPU ms/msg, on | on ÷ off | counted by /metrics |")
    add("|---|---|---|---|---|---|---|---|---|")
    for (cell,), on_rows in group(on, "cell").items():
        off_rows = [r for r in rows if r.get("cell") == cell and r.get("group") == "smtp" and "delivered_msgs_s" in r]
        rate_off, rate_on = med(r["delivered_msgs_s"] for r in off_rows), med(r["delivered_msgs_s"] for r in on_rows)
        cpu_off = med(r["server_cpu_ms_per_msg"] for r in off_rows)
        cpu_on = med(r["server_cpu_ms_per_msg"] for r in on_rows)
        counted = sorted({int(r["metrics_received"]) for r in on_rows if r.get("metrics_received") is not None})
        add(f"| {cell} | {len(off_rows)} + {len(on_rows)} | {spread([r['delivered_msgs_s'] for r in off_rows])} | "
            f"{spread([r['delivered_msgs_s'] for r in on_rows])} | {_change(rate_on, rate_off)} | "
            f"{spread([r['server_cpu_ms_per_msg'] for r in off_rows], '%.2f')} | "
            f"{spread([r['server_cpu_ms_per_msg'] for r in on_rows], '%.2f')} | {_change(cpu_on, cpu_off)} | "
            f"{', '.join(str(c) for c in counted) or '–'} |")
    add("")


def _change(new: float | None, old: float | None) -> str:
    if not new or not old:
        return "–"
    return f"{new / old:.3f} ({100 * (new - old) / old:+.1f} %)"


def extras_table(lines: list[str], rows: list[dict]) -> None:
    add = lines.append
    extra = [r for r in rows if r.get("group") in ("pipelining", "multircpt", "relay", "webhook")]
    if not extra:
        return
    add("### Sessions with several messages, multi-recipient, relay, webhook (1 KB)\n")
    add("| cell | variant | client | N msgs | runs | accepted msgs/s | delivered msgs/s | deliveries/s | "
        "server CPU ms/msg | client CPU ms/msg | far end CPU ms/msg | peak RSS MiB | other work, % CPU | failed runs |")
    add("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (cell, variant), rs in group(extra, "cell", "variant").items():
        per = rs[0].get("rcpts", 1) or 1
        deliveries = spread([r["delivered_msgs_s"] * per if r["delivered_msgs_s"] else None for r in rs])
        add(f"| {cell} | {variant} | {rs[0].get('client')} | {rs[0]['n']} | {len(rs)} | "
            f"{spread([r['accepted_msgs_s'] for r in rs])} | {spread([r['delivered_msgs_s'] for r in rs])} | "
            f"{deliveries} | {spread([r['server_cpu_ms_per_msg'] for r in rs], '%.2f')} | "
            f"{spread([r.get('client_cpu_ms_per_msg') for r in rs], '%.2f')} | "
            f"{spread([r.get('far_cpu_ms_per_msg') for r in rs], '%.2f') if 'far_cpu_ms_per_msg' in rs[0] else ''} | "
            f"{max(r['peak_rss_kb'] for r in rs) / 1024:.0f} | {spread([r.get('other_cpu_percent') for r in rs])} | "
            f"{sum(1 for r in rs if r['failed']) or ''} |")
    add("")
    add("- *accepted*: the client had every 250; *delivered*: in the Maildirs (multi-recipient: all 10 copies), "
        "or, for relay and webhook, the far end counted every message and `var/queue/env` was empty.")
    add("- The pipelining cell uses one client (bench/loadgen.py, asyncio) three ways, so only the session pattern "
        "differs; `smtp-source` cannot pipeline (man page, BUGS) and its `-d` sends N/c messages per connection.")
    add("")


def mailauth_table(lines: list[str], rows: list[dict]) -> None:
    """DKIM signing and the inbound checks beside the same cell without (bench/mailauth.py)."""
    add = lines.append
    cells = group([r for r in rows if r.get("group") == "mailauth"], "cell")
    if not cells:
        return
    add("### Mail authentication: DKIM signing and the inbound checks, beside the same load without (issue 13)\n")
    add("| cell | variant | client | N msgs | runs | delivered msgs/s | server CPU ms/msg | **added CPU ms/msg** | "
        "peak RSS MiB | other work, % CPU | failed runs |")
    add("|---|---|---|---|---|---|---|---|---|---|---|")
    for (cell,), cell_rows in cells.items():
        variants = group(cell_rows, "variant")
        base = med(r["server_cpu_ms_per_msg"] for r in next(iter(variants.values())))
        for (variant,), rs in variants.items():
            cpu = med(r["server_cpu_ms_per_msg"] for r in rs)
            added = "" if rs is next(iter(variants.values())) or cpu is None or base is None else f"{cpu - base:+.2f}"
            add(f"| {cell} | {variant} | {rs[0].get('client')} | {rs[0]['n']} | {len(rs)} | "
                f"{spread([r['delivered_msgs_s'] for r in rs])} | {spread([r['server_cpu_ms_per_msg'] for r in rs], '%.2f')} | "
                f"{added} | {max(r['peak_rss_kb'] for r in rs) / 1024:.0f} | {spread([r.get('other_cpu_percent') for r in rs])} | "
                f"{sum(1 for r in rs if r['failed']) or ''} |")
    add("")
    add("- *added*: the variant's median server CPU per message minus the first variant's (unsigned, or checks off), "
        "same load, a fresh gateway per variant, all started before the first run; the runs take turns "
        "(A B C, then C B A, ...), so a machine drifting between fast and slow does not favour one variant. "
        "The local DNS server's CPU (a process of its own) is not the server's.")
    add("")


def pop3_table(lines: list[str], rows: list[dict], anchors: Anchors) -> None:
    add = lines.append
    retr = [r for r in rows if r.get("cell") == "pop3-retr"]
    uidl = [r for r in rows if r.get("cell") == "pop3-uidl"]
    if not (retr or uidl):
        return
    source = "this run" if anchors.pop3_same_run else "ANCHORS.md"
    add(f"### POP3 (bench/pop3_uidl.py's sessions; anchors from {source})\n")
    add("| | mailgate | Dovecot | `twistd mail` |")
    add("|---|---|---|---|")
    if retr:
        add(f"| RETR msgs/s, {retr[0]['variant']} | **{spread([r['value'] for r in retr])}** | "
            f"{anchors.pop3_text('dovecot', 'retr', '%.0f')} | {anchors.pop3_text('twistd-mail', 'retr', '%.0f')} |")
        add(f"| whole RETR session, s | {spread([r['total'] for r in retr], '%.2f')} | | |")
        add(f"| server CPU ms per RETR | {spread([r['server_cpu_ms_per_retr'] for r in retr], '%.3f')} | | |")
    for phase in ("cold", "warm"):
        rs = [r for r in uidl if r["variant"].endswith(phase)]
        if rs:
            add(f"| login+STAT+UIDL+QUIT, {rs[0]['variant']}, s | **{spread([r['value'] for r in rs], '%.3f')}** "
                f"(login {spread([r['login'] for r in rs], '%.3f')}) | {anchors.pop3_text('dovecot', phase, '%.3f')} | "
                f"{anchors.pop3_text('twistd-mail', phase, '%.3f')} |")
    add("")
    add("- mailgate's cold runs drop the kernel's page, dentry and inode caches first (root); the anchors' cold is the "
        "first session after filling (Dovecot builds its index), caches warm. Warm runs come after one unmeasured "
        "session, so the password check is answered by the auth cache.")
    add("")


def idle_table(lines: list[str], rows: list[dict]) -> None:
    add = lines.append
    idle = [r for r in rows if r.get("cell") == "idle"]
    if not idle:
        return
    r = idle[0]
    add("### Idle SMTP sessions (bench/idle_sessions.py)\n")
    if r.get("variant") == "missing":
        add(f"{r['note']}\n")
        return
    add(f"`{r['command']}` (exit {r['rc']}):\n")
    table = [line for line in r.get("output", "").splitlines() if line.startswith(("|", "target"))]
    lines.extend(table)
    add("")


def queue_table(lines: list[str], rows: list[dict], meta: dict) -> None:
    add = lines.append
    queue = [r for r in rows if r.get("group") == "queue"]
    if not queue:
        return
    order = " ".join("E" if r["variant"] == "empty queue" else "F" for r in queue)
    add(f"### Accepting with a full queue (1 KB, c=10, into a local Maildir; a fresh gateway start per run; "
        f"order of the runs: {order})\n")
    add("| queue | runs | start-up: accepting, s | start-up: queue resumed, s | accepted msgs/s | delivered msgs/s | "
        "server CPU ms/msg | peak RSS MiB | queue entries after | other work, % CPU |")
    add("|---|---|---|---|---|---|---|---|---|---|")
    for (variant,), rs in group(queue, "variant").items():
        add(f"| {variant} | {len(rs)} | {spread([r.get('listening_s') for r in rs], '%.2f')} | "
            f"{spread([r.get('resumed_s') for r in rs], '%.2f')} | {spread([r['accepted_msgs_s'] for r in rs])} | "
            f"{spread([r['delivered_msgs_s'] for r in rs])} | {spread([r['server_cpu_ms_per_msg'] for r in rs], '%.2f')} | "
            f"{max(r['peak_rss_kb'] for r in rs) / 1024:.0f} | {rs[0].get('queued_after')} | "
            f"{spread([r.get('other_cpu_percent') for r in rs])} |")
    add("")
    add("- The deferred entries are written before start in mailgate.outbound.spool's format (its dataclasses make the JSON), "
        "next attempt 30 days ahead; the load starts once the log says the queue is resumed"
        + (f", plus {meta['queue_settle']:g} s" if meta.get("queue_settle") else "") + ".")
    add("")


BEGIN, END = "<!-- bench:begin {} -->", "<!-- bench:end {} -->"


def write_results(path: Path, label: str, text: str) -> None:
    """Replace the block marked for `label` in `path` (append it if absent); the rest of the file is kept."""
    begin, end = BEGIN.format(label), END.format(label)
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    old = path.read_text() if path.exists() else "# Benchmark results\n\nWritten by `python -m bench` (see bench/README.md).\n"
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        _, tail = rest.split(end, 1)
        new = head + block.rstrip("\n") + tail
    else:
        new = old.rstrip("\n") + "\n\n" + block
    path.write_text(new)
