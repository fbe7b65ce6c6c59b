"""What plugins on the message path cost (issue #16): the 1 KB c=50 cell with and without them.

Two gateways of the harness (bench/harness.py: the same configuration,
load, counting and CPU accounting as the `smtp-1k-c50` cell), side by side
in one invocation: "without plugins", and "with plugins", which enables
two plugins written into its `plugins/` directory: a `mailgate_message`
that returns None (it sees every message, as a content filter does, and
changes nothing) and a `mailgate_event` that counts the events it hears
(every accepted message emits a `received` event, which only exists when a
plugin wants events). Runs alternate ABBA so a drift of the shared machine
does not always fall on the same variant.

    .venv/bin/python -m bench.hook_cost                       # 3 runs each, N = 2000, c = 50
    .venv/bin/python -m bench.hook_cost --reps 5 --label hooks-cost

The machine is shared, and whole-server figures of runs a minute apart
differ by 20 % when others work on it, more than the difference sought. So
the script also times the plugin path alone, in this process: what a
message costs with the two plugins that it does not without (the message
joined in CRLF form for `mailgate_message` and the plugins asked in turn,
one `received` event built and delivered on the next reactor turn), best of
several repeats of many messages, which load barely moves; it is put
beside the server's CPU per message of the runs.

The figures go to stdout and into the `<!-- bench:begin LABEL -->` block
of bench/RESULTS.md (see `--results`, `--no-results`).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import harness
from bench.report import med, spread, write_results

PLUGINS = {
    "bench_noop_message": (
        '"""A mailgate_message plugin that sees every message and changes nothing."""\n'
        "from mailgate import hookimpl\n\n\n"
        "@hookimpl\n"
        "def mailgate_message(session, envelope, message):\n"
        "    return None\n"
    ),
    "bench_event_counter": (
        '"""A mailgate_event plugin that counts what it hears."""\n'
        "import collections\n\n"
        "from mailgate import hookimpl\n\n"
        "HEARD = collections.Counter()\n\n\n"
        "@hookimpl\n"
        "def mailgate_event(event):\n"
        '    HEARD[event["type"]] += 1\n'
    ),
}
WITH_PLUGINS = '\n[plugins]\npaths = ["plugins"]\nenable = ["bench_noop_message", "bench_event_counter"]\n'
VARIANTS = ("without plugins", "with plugins")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="runs per variant (3)")
    parser.add_argument("--n", type=int, default=2000, help="messages per run (2000)")
    parser.add_argument("--conc", type=int, default=50, help="concurrent connections (50)")
    parser.add_argument("--quiet", type=float, default=15.0, help="wait for other work under this %% of all CPUs")
    parser.add_argument("--quiet-wait", type=float, default=300.0, help="but at most this long (s)")
    parser.add_argument("--code", default="snapshot", help="as for python -m bench: snapshot, worktree or a revision")
    parser.add_argument("--label", default="hooks-cost", help="the RESULTS.md block to replace or add")
    parser.add_argument("--results", type=Path, default=harness.RESULTS_MD)
    parser.add_argument("--no-results", action="store_true")
    own = parser.parse_args(argv)
    base = harness.parse_args([])  # the harness's options measure() and Gateway read, at their defaults
    for key, value in vars(own).items():
        setattr(base, key, value)
    return base


def gateway_with_plugins(ctx: harness.Context) -> harness.Gateway:
    gateway = harness.Gateway(ctx, "hooks", WITH_PLUGINS)
    plugins = gateway.root / "plugins"
    plugins.mkdir()
    for name, source in PLUGINS.items():
        (plugins / f"{name}.py").write_text(source)
    return gateway


def run(ctx: harness.Context, args: argparse.Namespace) -> list[dict[str, Any]]:
    gateways = {VARIANTS[0]: harness.Gateway(ctx, "plain"), VARIANTS[1]: gateway_with_plugins(ctx)}
    rows: list[dict[str, Any]] = []
    try:
        for gateway in gateways.values():
            gateway.start()
        for rep in range(1, args.reps + 1):
            order = VARIANTS if rep % 2 else VARIANTS[::-1]  # ABBA
            for variant in order:
                gateway = gateways[variant]
                client, command = ctx.load_command(gateway.port, args.n, args.conc, 1024, harness.USER)
                maildir = gateway.maildir(harness.USER)
                harness.clear_maildir(maildir)
                result = harness.measure(ctx, gateway, command, args.n, lambda m=maildir: harness.count_files(m / "new"),
                                         args.n)
                harness.record(ctx, "smtp-1k-c50-hooks", "hooks", variant, rep, result, client=client, size=1024,
                               conc=args.conc, command=shlex.join(command), log_errors=gateway.errors_in_log())
                rows.append({"variant": variant, **result})
    finally:
        for gateway in gateways.values():
            gateway.stop()
            harness.cleanup(ctx, gateway.root)
    return rows


def plugin_path_us(messages: int = 20_000, repeats: int = 5) -> float:
    """Microseconds per message that the two plugins add: the best of `repeats` runs of `messages`."""
    import timeit
    import types

    from pluggy import PluginManager
    from twisted.internet.defer import Deferred
    from twisted.internet.task import Clock

    from mailgate import hookspecs
    from mailgate.core.route import Route
    from mailgate.core.session import Envelope, Session
    from mailgate.hooks.calling import Hooks
    from mailgate.hooks.events import Events
    from mailgate.inbound.message_hooks import run_message_hooks

    manager = PluginManager("mailgate")
    manager.add_hookspecs(hookspecs)
    for name, source in PLUGINS.items():
        module = types.ModuleType(name)
        exec(compile(source, name, "exec"), module.__dict__)  # noqa: S102 - the bench's own plugin text
        manager.register(module, name=name)
    clock = Clock()
    hooks, events = Hooks(manager, clock), Events(Hooks(manager, clock))
    envelope = Envelope(mail_from=harness.SENDER, rcpt_to=[harness.USER], session=Session(peer="127.0.0.1"),
                        routes={harness.USER: Route("local:" + harness.USER)})
    chunks = [b"Subject: bench\n\n", b"x" * 76 + b"\n"] * 13  # ~1 KB in the on-disk form, as DataReader holds it

    def one_message() -> None:
        wire = b"".join(chunks).replace(b"\n", b"\r\n")
        done = Deferred.fromCoroutine(run_message_hooks(hooks, envelope, wire, 10_000_000))
        assert done.called
        events.emit("received", queue_id="Q", mail_from=envelope.mail_from, recipient=harness.USER,
                    route="local:" + harness.USER, client="127.0.0.1")
        clock.advance(0)  # the event's plugins, on the next turn

    best = min(timeit.repeat(one_message, number=messages, repeat=repeats))
    return round(1e6 * best / messages, 1)


def table(rows: list[dict[str, Any]], meta: dict[str, Any], path_us: float) -> str:
    lines = [f"Command: `{meta['command']}`; {meta['started']}; code: {meta['code']}; "
             f"{meta['machine'].get('cpu', '')}", "",
             "| variant | runs | delivered msgs/s | server CPU ms/msg | peak RSS MiB | other work, % CPU | failed |",
             "|---|---|---|---|---|---|---|"]
    medians: dict[str, tuple[float | None, float | None]] = {}
    for variant in VARIANTS:
        mine = [row for row in rows if row["variant"] == variant]
        rates = [row["delivered_msgs_s"] for row in mine if row["delivered_msgs_s"]]
        cpus = [row["server_cpu_ms_per_msg"] for row in mine]
        medians[variant] = (med(rates), med(cpus))
        lines.append(f"| {variant} | {len(mine)} | {spread(rates)} | {spread(cpus, '%.2f')} | "
                     f"{spread([row['peak_rss_kb'] / 1024 for row in mine])} | "
                     f"{spread([row['other_cpu_percent'] for row in mine])} | {sum(row['failed'] for row in mine)} |")
    (rate0, cpu0), (rate1, cpu1) = medians[VARIANTS[0]], medians[VARIANTS[1]]
    if rate0 and rate1 and cpu0 and cpu1:
        lines += ["", f"With plugins: delivered msgs/s {100 * (rate1 / rate0 - 1):+.1f} %, "
                      f"server CPU per message {100 * (cpu1 / cpu0 - 1):+.1f} % (medians; target: within 10 %)."]
    lines += ["", f"The plugin path alone, in-process (best of 5 × 20,000 messages): {path_us} µs per message"
              + (f", {100 * path_us / (1000 * cpu0):.1f} % of the server CPU per message without plugins." if cpu0 else ".")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    smtp_source = harness.find_tool("smtp-source")
    if not smtp_source:
        harness.install_postfix()
        smtp_source = harness.find_tool("smtp-source")
    scratch = Path(tempfile.mkdtemp(prefix="mailgate-bench-hooks-"))
    out = harness.HERE / "results" / f"{args.label}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    try:
        code = harness.use_code(args.code, scratch)
        meta = {"command": "python -m bench.hook_cost " + shlex.join(sys.argv[1:] if argv is None else argv),
                "started": harness.utc_now(), "code": code, "machine": harness.machine()}
        users = scratch / "users"
        harness.make_users(scratch, users)
        ctx = harness.Context(args, out, scratch, users, smtp_source, harness.find_tool("smtp-sink"))
        ctx.code = harness.code_digest()
        rows = run(ctx, args)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    text = table(rows, meta, plugin_path_us())
    (out / "summary.md").write_text(text)
    sys.stdout.write(text)
    if not args.no_results:
        write_results(args.results, args.label, text)


if __name__ == "__main__":
    main()
