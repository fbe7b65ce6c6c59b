"""What the mail-authentication work costs in this process, per 1 KB message (issue 13, item 5).

The gateway cells (bench/mailauth.py) measure the server's CPU under
load on a shared machine; this times the same work alone, so a change
can be judged in a minute without the harness:

- `check, inline`: Checker.check (SPF, DKIM, DMARC) on the cells' 1 KB
  message, signed rsa-sha256 (2048 bits) by dkimpy, relaxed/simple, the
  DNS answers from memory behind mailgate.net.dns.CachingResolver (as a
  sender's next message finds them), every Deferred fired in the caller;
- `check, thread pool`: the same, one message after another, on a
  running reactor with the plugin's runner (mailgate.builtin.threads);
  CPU of the whole process (every thread) per message, and wall time;
- `dkim verify alone`: mailgate.mailauth.dkim_verify.verify_all on the
  message with its key in hand, and dkimpy's `dkim.verify` beside it;
- `sign rsa` / `sign ed25519`: Signer.fields (the key directory looked
  at, the signature made) and the key directory look alone.

Each figure is the median over `--repeats` runs of the mean of
`--number` messages, in CPU ms per message (time.process_time: this
process, every thread), but the one marked wall.

    PYTHONPATH=. .venv/bin/python bench/mailauth_inprocess.py
    PYTHONPATH=. .venv/bin/python bench/mailauth_inprocess.py --sizes     # and verify_all on 16, 64 KB
    PYTHONPATH=. .venv/bin/python bench/mailauth_inprocess.py --pool-always   # DKIM always in the pool
    PYTHONPATH=. .venv/bin/python bench/mailauth_inprocess.py --profile   # cProfile of the inline check
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import pstats
import shutil
import statistics
import tempfile
import time
from typing import Any, Callable, cast

import dkim  # type: ignore[import-untyped]  # dkimpy ships no type information
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet import task
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.names import dns

from bench.mailauth import signed_message  # the gateway cells' message and key
from mailgate.config import DKIMConfig
from mailgate.mailauth.checks import Checker
from mailgate.mailauth.dkim_sign import Signer
from mailgate.mailauth.dmarc import OrganizationalDomains
from mailgate.mailauth.keys import write_new_key
from mailgate.mailauth.results import Results
from mailgate.net.dns import CachingResolver, Lookups

SENDER, USER, DOMAIN = "bench@client.test", "benchuser@example.test", "client.test"
CLIENT_IP = "127.0.0.1"
CHECKS = ("spf", "dkim", "dmarc")


class MemoryResolver:
    """TXT answers from a dict; NXDOMAIN-free: a name it lacks has no records."""

    def __init__(self, zone: dict[str, list[str]]) -> None:
        self.zone = zone

    def lookupText(self, name: str, timeout: Any = None) -> Deferred[Any]:  # noqa: N802 - IResolver's name
        answers = [dns.RRHeader(name.encode(), dns.TXT, ttl=300, payload=dns.Record_TXT(text.encode(), ttl=300))
                   for text in self.zone.get(name.lower().rstrip("."), [])]
        return succeed((answers, [], []))


def zone(public: str) -> dict[str, list[str]]:
    return {DOMAIN: ["v=spf1 ip4:127.0.0.1 -all"], f"_dmarc.{DOMAIN}": ["v=DMARC1; p=reject"],
            f"bench._domainkey.{DOMAIN}": [f"v=DKIM1; k=rsa; p={public}"]}


def checker(public: str, clock: Any, run_in_thread: Any) -> Checker:
    lookups = Lookups(CachingResolver(MemoryResolver(zone(public)), clock), 5.0, clock)
    return Checker(lookups, CHECKS, OrganizationalDomains(), run_in_thread, 16.0)


def timed(work: Callable[[], object], number: int, repeats: int) -> float:
    """Median over `repeats` of the mean CPU ms of `number` calls of `work` (CPU, not wall: on a shared
    machine the wall clock also counts the time others had the CPU)."""
    work()
    means = []
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(number):
            work()
        means.append((time.process_time() - start) * 1000 / number)
    return statistics.median(means)


def check_inline(message: bytes, public: str) -> Callable[[], object]:
    checking = checker(public, task.Clock(), maybeDeferred)

    def once() -> object:
        done = Deferred.fromCoroutine(checking.check(CLIENT_IP, SENDER, "client.test", message))
        results = cast(Results, done.result)  # every answer is in memory: fired already
        assert results.dkim and results.dkim[0].result == "pass", results
        assert results.dmarc and results.dmarc.result == "pass", results
        return results
    return once


def check_in_threads(message: bytes, public: str, number: int, repeats: int) -> tuple[float, float]:
    """(CPU ms, wall ms) per message, the median over `repeats` runs of `number` messages."""
    from twisted.internet import reactor

    from mailgate.builtin.threads import in_threads

    checking = checker(public, reactor, in_threads(reactor))
    runs: list[tuple[float, float]] = []

    async def run() -> None:
        for repeat in range(repeats + 1):
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(number):
                results = await checking.check(CLIENT_IP, SENDER, "client.test", message)
                assert results.dkim is not None and results.dkim[0].result == "pass", results
            if repeat:  # the first warms the pool and the caches
                runs.append(((time.process_time() - cpu) * 1000 / number,
                             (time.perf_counter() - wall) * 1000 / number))

    def main() -> None:
        done = Deferred.fromCoroutine(run())
        done.addErrback(lambda failure: failure.printTraceback())
        done.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(main)
    reactor.run()
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def verify_alone(message: bytes, public: str) -> tuple[Callable[[], object], Callable[[], object]]:
    from mailgate.mailauth import dkim_verify

    record = zone(public)[f"bench._domainkey.{DOMAIN}"][0].encode()
    found = dkim_verify.signatures(message)
    keys = {found[0].key_name: dkim_verify.KeyAnswer(record)}

    def ours() -> object:
        [result] = dkim_verify.verify_all(message, found, keys)
        assert result.result == "pass", result
        return result

    def dkimpys() -> object:
        assert dkim.verify(message, dnsfunc=lambda name, timeout=0: record)
        return True
    return ours, dkimpys


def verify_sizes(number: int, repeats: int) -> list[tuple[str, float]]:
    """verify_all on bigger messages: what verifying on the reactor (dkim_verify.INLINE_MAX_BYTES) costs."""
    from bench.loadgen import message as make
    from mailgate.mailauth import dkim_verify

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    record = b"v=DKIM1; p=" + base64.b64encode(key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
    rows = []
    for size in (1024, 16 * 1024, 64 * 1024):
        plain = make(SENDER, [USER], size, 0)[: -len(b".\r\n")].replace(b"\r\n..", b"\r\n.")
        for body in (b"simple", b"relaxed"):
            signed = plain
            for _ in range(2):
                signed = dkim.sign(signed, b"bench", DOMAIN.encode(), pem, canonicalize=(b"relaxed", body),
                                   include_headers=[b"from", b"to", b"subject", b"message-id"]) + signed
            found = dkim_verify.signatures(signed)
            keys = {found[0].key_name: dkim_verify.KeyAnswer(record)}
            for count in (1, 2):
                def once(found: list[Any] = found[:count], signed: bytes = signed) -> object:
                    results = dkim_verify.verify_all(signed, found, keys)
                    assert all(result.result == "pass" for result in results), results
                    return results
                rows.append((f"verify_all, {size // 1024} KB, c=relaxed/{body.decode()}, {count} signature(s)",
                             timed(once, max(10, number // (size // 1024)), repeats)))
    for size in (16 * 1024, 64 * 1024):  # made to be slow: a line end and a space to strip every 4 bytes
        slow = b"From: <%s>\r\nSubject: slow\r\n\r\n" % SENDER.encode() + b"a \r\n" * ((size - 200) // 4)
        for body in (b"simple", b"relaxed"):  # two canonical bodies, one with l=: nothing shared
            slow = dkim.sign(slow, b"bench", DOMAIN.encode(), pem, canonicalize=(b"relaxed", body),
                             include_headers=[b"from"], length=body == b"relaxed") + slow
        found = dkim_verify.signatures(slow)

        def slowest(found: list[Any] = found, slow: bytes = slow) -> object:
            return dkim_verify.verify_all(slow, found, {found[0].key_name: dkim_verify.KeyAnswer(record)})
        rows.append((f"verify_all, {size // 1024} KB of 'a ' lines, 2 signatures (simple; relaxed, l=)",
                     timed(slowest, max(10, number // (size // 1024)), repeats)))
    return rows


def signing(keys_dir: str, algorithm: str, message: bytes) -> tuple[Callable[[], object], Callable[[], object]]:
    domain = f"{algorithm}.test"
    write_new_key(keys_dir, domain, "s1", algorithm)
    signer = Signer(DKIMConfig(keys_dir=keys_dir))
    mail = message.replace(f"@{DOMAIN}>".encode(), f"@{domain}>".encode(), 1)

    def fields() -> object:
        [field] = signer.fields(mail)
        return field
    return fields, lambda: signer.keys.keys_for(domain)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=500, help="messages per run (default 500)")
    parser.add_argument("--repeats", type=int, default=7, help="runs; the median is shown (default 7)")
    parser.add_argument("--profile", action="store_true", help="cProfile the inline check instead")
    parser.add_argument("--sort", default="tottime", help="cProfile order: tottime, cumulative, ...")
    parser.add_argument("--sizes", action="store_true", help="also verify_all on 16 and 64 KB messages")
    parser.add_argument("--pool-always", action="store_true",
                        help="verify in the thread pool whatever the size (as before INLINE_MAX_BYTES)")
    parser.add_argument("--no-threads", action="store_true", help="skip the thread-pool figure")
    args = parser.parse_args()
    message, public = signed_message()
    if args.profile:
        once = check_inline(message, public)
        profile = cProfile.Profile()
        profile.runcall(lambda: [once() for _ in range(args.number * args.repeats)])
        pstats.Stats(profile).sort_stats(args.sort).print_stats(40)
        return
    n, r = args.number, args.repeats
    rows = [("check, inline", timed(check_inline(message, public), n, r))]
    ours, dkimpys = verify_alone(message, public)
    rows += [("dkim verify alone (verify_all)", timed(ours, n, r)), ("dkimpy's dkim.verify", timed(dkimpys, n, r))]
    keys_dir = tempfile.mkdtemp(prefix="bench-dkim-keys-")
    try:
        for algorithm in ("rsa", "ed25519"):
            fields, look = signing(keys_dir, algorithm, message)
            rows += [(f"sign {algorithm} (Signer.fields)", timed(fields, n, r)),
                     (f"  of which the key directory look ({algorithm})", timed(look, n, r))]
    finally:
        shutil.rmtree(keys_dir)
    if args.sizes:
        rows += verify_sizes(n, r)
    if args.pool_always:
        from mailgate.mailauth import dkim_verify
        dkim_verify.INLINE_MAX_BYTES = -1
    if not args.no_threads:
        cpu, wall = check_in_threads(message, public, n, r)
        rows += [("check, thread pool: CPU (all threads)", cpu), ("check, thread pool: wall", wall)]
    print(f"{len(message)}-byte message; median of {r} runs of {n}, ms per message\n")
    print("| what | ms |\n|---|---|")
    for what, ms in rows:
        print(f"| {what} | {ms:.3f} |")


if __name__ == "__main__":
    main()
