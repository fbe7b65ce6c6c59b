"""Tests for mailgate.builtin.pipe: real programs on stdin, their exits, and a real gateway.

The unit tests run small Python scripts written to a temporary directory with
the running reactor (trial). The end-to-end test starts `twistd mailgate`, sends
with smtplib, and polls for the script's output and for the bounce.
"""

from __future__ import annotations

import email
import json
import os
import re
import smtplib
import stat
import sys
import tempfile
import textwrap
import time
from email import policy
from pathlib import Path
from typing import Any, Callable

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from mailgate.builtin.pipe import DIAGNOSTIC_MAX_CHARS, PipeGateway, one_line
from mailgate.config import parse_config
from mailgate.core.session import Envelope
from mailgate.core.errors import PermanentFailure, TemporaryFailure
from tests.support.gateway import wait_for

MESSAGE = b"From: alice@example.test\r\nSubject: ticket\r\n\r\nHello,\r\nline two\r\n"
LEAK_MARKER = "MAILGATE_TEST_SECRET_MARKER"


def write_script(directory: Path, name: str, body: str, interpreter: str = sys.executable) -> Path:
    path = directory / name
    path.write_text(f"#!{interpreter}\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


# Reads /proc/self/environ: what the program was given, before Python's own
# locale coercion adds LC_CTYPE to os.environ.
RECORDER = """\
    import json, os, sys
    out = sys.argv[1]
    open(out + ".stdin", "wb").write(sys.stdin.buffer.read())
    raw = open("/proc/self/environ", "rb").read().split(b"\\0")
    env = dict(item.decode().split("=", 1) for item in raw if item)
    json.dump({"env": env, "argv": sys.argv}, open(out + ".json", "w"))
"""


def pipe_gateway(pipes: dict[str, dict[str, Any]]) -> PipeGateway:
    gateway = PipeGateway(reactor)
    gateway.mailgate_configure(parse_config({
        "listen": [{"name": "mx", "protocol": "smtp", "endpoint": "tcp:2525:interface=127.0.0.1"}],
        "pipe": pipes,
    }))
    return gateway


def envelope(*rcpt_to: str) -> Envelope:
    return Envelope(mail_from="alice@example.test", rcpt_to=list(rcpt_to or ["bob@legacy.test"]))


class PipeGatewayTests(TestCase):
    """Each test runs real processes; the reactor is trial's."""

    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp())
        os.environ[LEAK_MARKER] = "leaked"
        self.addCleanup(os.environ.pop, LEAK_MARKER, None)

    async def deliver(self, command: list[str], route: str = "pipe:prog", timeout: str = "20s",
                      env: Envelope | None = None, message: bytes = MESSAGE) -> Any:
        gateway = pipe_gateway({"prog": {"command": command, "timeout": timeout}})
        return await gateway.mailgate_deliver(route=route, envelope=env or envelope(), message=message)

    async def failure_of(self, kind: type[Exception], command: list[str], **kwargs: Any) -> Any:
        try:
            await self.deliver(command, **kwargs)
        except kind as exc:
            return exc
        self.fail(f"expected {kind.__name__}")

    async def test_exit_0_delivers_the_message_on_stdin_with_a_clean_environment(self) -> None:
        """stdin is the CRLF message; the environment is SENDER, RECIPIENT(S) and PATH only."""
        script = write_script(self.dir, "record", RECORDER)
        out = str(self.dir / "out")
        env = envelope("bob@legacy.test", "carol@legacy.test")
        self.assertIs(await self.deliver([str(script), out], env=env), True)
        self.assertEqual(Path(out + ".stdin").read_bytes(), MESSAGE)
        seen = json.loads(Path(out + ".json").read_text())["env"]
        self.assertEqual(seen, {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "SENDER": "alice@example.test",
            "RECIPIENT": "bob@legacy.test,carol@legacy.test",
            "RECIPIENTS": "bob@legacy.test carol@legacy.test",
        })
        self.assertNotIn(LEAK_MARKER, seen)

    async def test_arguments_are_passed_as_they_are_never_through_a_shell(self) -> None:
        script = write_script(self.dir, "record", RECORDER)
        out = str(self.dir / "out")
        tricky = ["$HOME; touch pwned", "a b", "*", ""]
        self.assertIs(await self.deliver([str(script), out, *tricky]), True)
        self.assertEqual(json.loads(Path(out + ".json").read_text())["argv"][2:], tricky)
        self.assertFalse((self.dir / "pwned").exists())

    async def test_null_sender_is_an_empty_sender_variable(self) -> None:
        script = write_script(self.dir, "record", RECORDER)
        out = str(self.dir / "out")
        await self.deliver([str(script), out], env=Envelope(mail_from="", rcpt_to=["bob@legacy.test"]))
        self.assertEqual(json.loads(Path(out + ".json").read_text())["env"]["SENDER"], "")

    async def test_a_bare_program_name_is_found_on_the_safe_path(self) -> None:
        self.assertIs(await self.deliver(["true"]), True)

    async def test_exit_75_is_a_temporary_failure(self) -> None:
        script = write_script(self.dir, "busy", """\
            import sys
            sys.stderr.write("database locked\\n")
            sys.exit(75)
        """)
        failure = await self.failure_of(TemporaryFailure, [str(script)])
        self.assertEqual(failure.code, 451)
        self.assertIn("exit status 75", failure.text)
        self.assertIn("database locked", failure.text)

    async def test_other_exit_status_is_permanent_with_stderr_on_one_line(self) -> None:
        script = write_script(self.dir, "broken", """\
            import sys
            sys.stdin.read()
            sys.stderr.write("no such customer\\n  account 42 closed\\n")
            sys.exit(3)
        """)
        failure = await self.failure_of(PermanentFailure, [str(script)])
        self.assertEqual((failure.code, failure.enhanced), (554, "5.3.0"))
        self.assertEqual(failure.text, "delivery program exit status 3: no such customer account 42 closed")

    async def test_exit_1_of_a_program_on_the_path_is_permanent(self) -> None:
        failure = await self.failure_of(PermanentFailure, ["false"])
        self.assertEqual(failure.text, "delivery program exit status 1")

    async def test_a_signal_is_permanent(self) -> None:
        script = write_script(self.dir, "crash", """\
            import os, signal
            os.kill(os.getpid(), signal.SIGTERM)
        """)
        failure = await self.failure_of(PermanentFailure, [str(script)])
        self.assertIn("killed by signal 15", failure.text)

    async def test_timeout_kills_the_program_and_what_it_started(self) -> None:
        """A shell script's `sleep` dies too: otherwise it would hold the pipes open."""
        pid_file = self.dir / "sleeper.pid"
        script = write_script(self.dir, "slow", f"""\
            echo "still working" >&2
            sleep 30 &
            echo $! > {pid_file}
            wait
        """, interpreter="/bin/sh")
        started = time.monotonic()
        failure = await self.failure_of(PermanentFailure, [str(script)], timeout="1s")
        self.assertLess(time.monotonic() - started, 10)
        self.assertEqual(failure.text, "delivery program timed out after 1s: still working")
        sleeper = int(pid_file.read_text())
        deadline = time.monotonic() + 5
        while is_alive(sleeper) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertFalse(is_alive(sleeper))

    async def test_stderr_is_capped_and_a_program_ignoring_stdin_is_fine(self) -> None:
        script = write_script(self.dir, "noisy", """\
            import sys
            sys.stderr.write("x" * 200000)
            sys.exit(2)
        """)
        failure = await self.failure_of(PermanentFailure, [str(script)], message=MESSAGE * 50000)
        self.assertIn("exit status 2", failure.text)
        self.assertLessEqual(len(failure.text), DIAGNOSTIC_MAX_CHARS + 40)

    async def test_missing_program_is_temporary(self) -> None:
        failure = await self.failure_of(TemporaryFailure, [str(self.dir / "nope")])
        self.assertEqual(failure.code, 451)
        failure = await self.failure_of(TemporaryFailure, ["no-such-program-anywhere"])
        self.assertIn("not found", failure.reason)

    async def test_unknown_pipe_is_temporary(self) -> None:
        await self.failure_of(TemporaryFailure, ["true"], route="pipe:other")

    def test_other_schemes_are_not_ours(self) -> None:
        gateway = pipe_gateway({"prog": {"command": ["true"]}})
        for route in ("webhook:x", "spool:/tmp", "pipeline:prog", "local"):
            self.assertIsNone(gateway.mailgate_deliver(route=route, envelope=envelope(), message=MESSAGE))


def is_alive(pid: int) -> bool:
    """True for a running process; a zombie (no reaper in a container) counts as dead."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_one_line_flattens_and_cleans_stderr() -> None:
    assert one_line(b"  first\r\n\tsecond  \n") == "first second"
    assert one_line("caf\u00e9 \x1b[31mred".encode()) == "caf\u00e9 ?[31mred"
    assert one_line(b"\xff") == "\ufffd"
    long = one_line(b"y" * 1000)
    assert len(long) == DIAGNOSTIC_MAX_CHARS and long.endswith("...")


# --- end to end: a real twistd ---------------------------------------------------

ALICE = "alice@example.test"


def test_gateway_pipes_mail_to_a_program_and_bounces_its_failure(make_gateway: Callable[..., Any]) -> None:
    """relay.transport routes to pipe:NAME; exit 0 delivers, exit 3 bounces with the stderr."""
    scripts = Path(tempfile.mkdtemp())
    out = scripts / "received"
    crm = write_script(scripts, "crm", RECORDER)
    broken = write_script(scripts, "broken", """\
        import sys
        sys.stdin.read()
        sys.stderr.write("ticket system says: unknown queue\\n")
        sys.exit(3)
    """)
    gateway = make_gateway(extra=textwrap.dedent(f"""\
        [relay]
        retry_intervals = ["1s"]
        [relay.transport]
        "legacy.test" = "pipe:crm"
        "broken.test" = "pipe:broken"
        [pipe.crm]
        command = [{json.dumps(str(crm))}, {json.dumps(str(out))}]
        timeout = "20s"
        [pipe.broken]
        command = [{json.dumps(str(broken))}]
    """))
    gateway.add_user(ALICE)
    gateway.start()
    body = "Subject: for the crm\r\n\r\nticket body\r\n"
    with smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=30) as client:
        client.sendmail(ALICE, ["bob@legacy.test", "carol@legacy.test"], body)
        client.sendmail(ALICE, ["dave@broken.test"], "Subject: doomed\r\n\r\nnever\r\n")

    seen = wait_for(lambda: Path(f"{out}.json").exists() and json.loads(Path(f"{out}.json").read_text()),
                    20, "the crm script to run")
    assert seen["env"]["SENDER"] == ALICE
    assert seen["env"]["RECIPIENT"] == "bob@legacy.test,carol@legacy.test"
    delivered = Path(f"{out}.stdin").read_bytes()
    assert delivered.endswith(b"\r\n\r\nticket body\r\n") and b"\nReceived: " in b"\n" + delivered
    assert b"\n" not in delivered.replace(b"\r\n", b"")

    bounces = wait_for(lambda: gateway.new_messages(ALICE), 20, "the bounce")
    bounce = email.message_from_bytes(bounces[0].read_bytes(), policy=policy.default)
    text = " ".join(bounces[0].read_text().split())  # unfolded
    assert bounce["Return-Path"] == "<>"
    assert re.search(r"Diagnostic-Code: smtp; 554 (5\.3\.0 )?delivery program exit status 3: "
                     r"ticket system says: unknown queue", text)
    assert "dave@broken.test" in text
