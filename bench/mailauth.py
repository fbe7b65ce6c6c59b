"""The mail-authentication cells (issue 13, item 5): what DKIM signing and the inbound checks cost.

Each cell starts one fresh gateway per variant, the only difference the
feature, and runs the same load on them in turn (A B C, then C B A, ...),
so the server CPU per message of the variants, side by side, is what the
feature adds:

- `dkim-relay-1k-c10`, `dkim-relay-100k-c10`: 1 KB / 100 KB relayed from
  `relay.allowed_networks` to the smart host (smtp-sink, as the relay
  cells), unsigned (`dkim.sign = "off"`), then signed with an RSA 2048 key,
  then with an Ed25519 key of the From: domain (client.test, smtp-source's).
- `checks-1k-c10`: 1 KB into a Maildir from an unauthenticated client
  (the MX case), with the checks off, then on (SPF, DKIM, DMARC), against
  a local DNS server (tests/support/fake_dns.py, in a process of its own:
  bench/dns_server.py) that publishes an SPF record passing 127.0.0.1, a
  DMARC p=reject policy and the DKIM key. Every message is the same
  1 KB message, signed (rsa-sha256, by dkimpy: the sender's signer), sent
  by bench/loadgen.py for both variants; before the timed runs one copy
  is checked to carry spf=pass, dkim=pass and dmarc=pass.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.harness import (
    BIN,
    HERE,
    REPO,
    RELAY_RCPT,
    SENDER,
    USER,
    Context,
    Far,
    Gateway,
    cleanup,
    clear_maildir,
    count_files,
    interleaved,
    log,
    measure,
    queue_drained,
    record,
)

GROUP = "mailauth"
SIGNING_VARIANTS = (("relay, not signed", None), ("relay, DKIM rsa-sha256 (2048 bits)", "rsa"),
                    ("relay, DKIM ed25519-sha256", "ed25519"))
CHECKS_VARIANTS = (("MX, checks off", "[]"), ('MX, checks on (spf, dkim, dmarc)', '["spf", "dkim", "dmarc"]'))
SENDER_DOMAIN = SENDER.rpartition("@")[2]


def started(ctx: Context, stack: contextlib.ExitStack, cell: str, extra: str) -> Gateway:
    """A gateway made, to be stopped and removed when the cell ends (started by the caller)."""
    gateway = Gateway(ctx, cell, extra)
    stack.callback(cleanup, ctx, gateway.root)
    stack.callback(gateway.stop)
    return gateway


def signing_cell(size: int) -> Callable[[Context], None]:
    def run(ctx: Context) -> None:
        n = ctx.args.n1k if size == 1024 else ctx.args.n100k
        cell = f"dkim-relay-{size // 1024}k-c10"
        with contextlib.ExitStack() as stack:
            far = Far(ctx, "smtp")
            stack.callback(far.stop)
            variants = [(variant, _signing_gateway(ctx, stack, cell, far, algorithm))
                        for variant, algorithm in SIGNING_VARIANTS]
            for rep, (variant, gateway) in interleaved(variants, ctx.args.reps):
                client, command = ctx.load_command(gateway.port, n, 10, size, RELAY_RCPT)
                base = far.count()
                result = measure(ctx, gateway, command, n, lambda base=base: far.count() - base, n,
                                 queue_drained(gateway))
                record(ctx, cell, GROUP, variant, rep, result, client=client, size=size, conc=10,
                       command=shlex.join(command), log_errors=gateway.errors_in_log())
    return run


def _mailgate(gateway: Gateway, *args: str) -> str:
    done = subprocess.run([str(BIN / "mailgate"), "--config", str(gateway.config), *args], cwd=gateway.root,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"mailgate {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def _signing_gateway(ctx: Context, stack: contextlib.ExitStack, cell: str, far: Far, algorithm: str | None) -> Gateway:
    """Relaying from the allowed network to `far`; with a key of the From: domain, or `dkim.sign = "off"`."""
    extra = (f'\n[relay]\nallowed_networks = ["127.0.0.0/8"]\nsmarthost = "127.0.0.1:{far.port}"\n'
             + ('\n[dkim]\nsign = "off"\n' if algorithm is None else ""))
    gateway = started(ctx, stack, cell, extra)
    if algorithm is not None:
        _mailgate(gateway, "dkim", "keygen", SENDER_DOMAIN, "--selector", "bench", "--algorithm", algorithm)
    gateway.start()
    _check_signing(gateway, algorithm)
    return gateway


def _check_signing(gateway: Gateway, algorithm: str | None) -> None:
    """One message from the allowed network to a local mailbox: signed as the variant says, or the cell is wrong."""
    import smtplib

    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=30) as client:
        client.sendmail(SENDER, [USER], f"From: <{SENDER}>\r\nSubject: check\r\n\r\nhello\r\n".encode())
    new = gateway.maildir(USER) / "new"
    deadline = time.monotonic() + 10
    while not count_files(new) and time.monotonic() < deadline:
        time.sleep(0.02)
    [path] = list(new.iterdir())
    stored = path.read_bytes().replace(b"\n ", b" ")
    signed = b"\nDKIM-Signature: " in stored
    if signed != (algorithm is not None) or (algorithm and f"a={algorithm}-sha256;".encode() not in stored):
        raise SystemExit(f"DKIM signing is not what the variant says ({algorithm}): {stored[:600]!r}")
    clear_maildir(gateway.maildir(USER))


# --- the checks ---------------------------------------------------------------------------


def signed_message() -> tuple[bytes, str]:
    """The 1 KB message every client sends, signed by client.test's key (dkimpy), and that key's DNS p= value."""
    import dkim
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from bench.loadgen import message

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    plain = message(SENDER, [USER], 1024, 0)[: -len(b".\r\n")].replace(b"\r\n..", b"\r\n.")
    signed = dkim.sign(plain, b"bench", SENDER_DOMAIN.encode(), pem, canonicalize=(b"relaxed", b"simple"),
                       include_headers=[b"from", b"to", b"subject", b"message-id"]) + plain
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return signed, base64.b64encode(public).decode()


def _signed_message(ctx: Context) -> tuple[Path, str]:
    """signed_message() in a file of the scratch directory, for the clients to send."""
    signed, public = signed_message()
    path = Path(tempfile.mkstemp(prefix="bench-signed-", suffix=".eml", dir=ctx.scratch)[1])
    path.write_bytes(signed)
    return path, public


class DNS:
    """bench/dns_server.py serving `zone`, in its own process (its CPU is not the server's)."""

    def __init__(self, ctx: Context, zone: dict) -> None:
        path = Path(tempfile.mkstemp(prefix="bench-zone-", suffix=".json", dir=ctx.scratch)[1])
        path.write_text(json.dumps(zone))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        self.process = subprocess.Popen([sys.executable, str(HERE / "dns_server.py"), str(path)], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline().split()[1])

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def checks_cell(ctx: Context) -> None:
    cell, n = "checks-1k-c10", ctx.args.n1k
    signed, public = _signed_message(ctx)
    with contextlib.ExitStack() as stack:
        dns = DNS(ctx, {
            SENDER_DOMAIN: {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
            f"_dmarc.{SENDER_DOMAIN}": {"TXT": ["v=DMARC1; p=reject"]},
            f"bench._domainkey.{SENDER_DOMAIN}": {"TXT": [f"v=DKIM1; k=rsa; p={public}"]},
        })
        stack.callback(dns.stop)
        variants = []
        for variant, checks in CHECKS_VARIANTS:
            extra = (f'\n[relay]\nnameservers = ["127.0.0.1:{dns.port}"]\n'
                     f'\n[authentication]\nchecks = {checks}\ndns_timeout = "2s"\n')
            gateway = started(ctx, stack, cell, extra)
            gateway.start()
            _check_results(gateway, signed, checks != "[]")
            variants.append((variant, gateway))
        for rep, (variant, gateway) in interleaved(variants, ctx.args.reps):
            command = [sys.executable, str(HERE / "loadgen.py"), "--port", str(gateway.port), "-n", str(n), "-c", "10",
                       "--to", USER, "--sender", SENDER, "--message", str(signed)]
            clear_maildir(gateway.maildir(USER))
            new = gateway.maildir(USER) / "new"
            result = measure(ctx, gateway, command, n, lambda new=new: count_files(new), n)
            record(ctx, cell, GROUP, variant, rep, result, client="python", size=1024, conc=10,
                   command=shlex.join(command), log_errors=gateway.errors_in_log())


def _check_results(gateway: Gateway, signed: Path, checked: bool) -> None:
    """One copy through the gateway first: the results the cell claims to measure, or none when off."""
    import smtplib

    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=30) as client:
        client.sendmail(SENDER, [USER], signed.read_bytes())
    new = gateway.maildir(USER) / "new"
    deadline = time.monotonic() + 10
    while not count_files(new) and time.monotonic() < deadline:
        time.sleep(0.02)
    [path] = list(new.iterdir())
    stored = path.read_bytes()
    wanted = [b"spf=pass", b"dkim=pass", b"dmarc=pass"] if checked else []
    if any(word not in stored for word in wanted) or (not checked and b"Authentication-Results" in stored):
        raise SystemExit(f"the checks did not give what the cell measures: {stored[:700]!r}")
    log(f"  checks {'on' if checked else 'off'}: verified on one copy")
    clear_maildir(gateway.maildir(USER))


def cells() -> list[tuple[str, str, Callable[[Context], None]]]:
    return [("dkim-relay-1k-c10", GROUP, signing_cell(1024)), ("dkim-relay-100k-c10", GROUP, signing_cell(102400)),
            ("checks-1k-c10", GROUP, checks_cell)]
