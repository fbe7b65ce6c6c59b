"""A disk that fills during a list delivery: a message answered 4xx leaves no copy at any member.

A real `twistd mailgate` runs under RLIMIT_FSIZE, so no file it writes may
grow past LIMIT bytes (the write fails with EFBIG, as one would with
ENOSPC on a full disk). A list has two local members (one Maildir file,
linked into both) and a remote one (a queue entry, which has no
Return-Path and so is a few bytes shorter). Messages are sized around the
limit: some fit everywhere, some fit the queue but not the Maildir (the
queue entry is written first and must be taken back), some fit nowhere.
Whatever the client heard, the members hold exactly that: a 250 is one
whole copy at every member, a 4xx is no copy at any, and no partial file
stays behind in any tmp/.
"""

from __future__ import annotations

import re
import resource
import signal
import smtplib
from pathlib import Path

from tests.support.gateway import Gateway, free_port

LIMIT = 256 * 1024  # RLIMIT_FSIZE of the server: bytes any one file may hold
LIST, POSTER = "team@example.test", "poster@remote.test"
LOCAL_MEMBERS = ("alice@example.test", "bob@example.test")
REMOTE_MEMBER = "carol@remote.test"
SERIAL = re.compile(rb"^Subject: storage test serial (\d+)$", re.MULTILINE)


def limited_file_size() -> None:
    """In the child, before exec: files up to LIMIT bytes; EFBIG past it, not SIGXFSZ."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


def message(serial: int, size: int) -> bytes:
    """A message of exactly `size` bytes as stored (LF line ends); its last line names it."""
    head = b"Subject: storage test serial %04d\n\n" % serial
    tail = b"end of message %04d\n" % serial
    filler = size - len(head) - len(tail)
    assert filler >= 0, size
    lines = [b"x" * 99 + b"\n"] * (filler // 100)
    if filler % 100:  # a short last line keeps the length exact
        lines.append(b"z" * (filler % 100 - 1) + b"\n")
    return head + b"".join(lines) + tail


def send(gateway: Gateway, data: bytes) -> int:
    """Post `data` to the list; the reply code to DATA (or to the end of it)."""
    with smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=30) as client:
        client.ehlo("client.test")
        client.mail(POSTER)
        assert client.rcpt(LIST)[0] == 250
        code, _ = client.data(data.replace(b"\n", b"\r\n"))
        return code


def copies(directory: Path) -> dict[int, list[bytes]]:
    """Serial -> contents of every file under `directory` holding one."""
    found: dict[int, list[bytes]] = {}
    for path in directory.rglob("*") if directory.exists() else ():
        if path.is_file() and (match := SERIAL.search(data := path.read_bytes())):
            found.setdefault(int(match.group(1)), []).append(data)
    return found


def test_a_message_refused_for_a_full_disk_leaves_no_copy_at_any_member(make_gateway) -> None:
    gateway = make_gateway(extra=f"""
[lists."{LIST}"]
members = {list(LOCAL_MEMBERS) + [REMOTE_MEMBER]!r}
[relay]
smarthost = "127.0.0.1:{free_port()}"
retry_intervals = ["1h"]
""".replace("'", '"'))
    for member in LOCAL_MEMBERS:
        gateway.add_user(member)
    gateway.start(preexec_fn=limited_file_size)
    mail, queue = gateway.root / "var" / "mail", gateway.root / "var" / "queue"

    # What the stores add to a message: trace headers, List-Id, Return-Path (Maildir only).
    assert send(gateway, message(0, 1000)) == 250
    [[maildir_copy]] = copies(mail / "example.test" / "alice" / "new").values()
    [[queued_copy]] = copies(queue / "msg").values()
    maildir_extra, queue_extra = len(maildir_copy) - 1000, len(queued_copy) - 1000
    assert 0 < queue_extra < maildir_extra, (queue_extra, maildir_extra, queued_copy[:300])

    fits_maildir, fits_queue = LIMIT - maildir_extra, LIMIT - queue_extra
    sizes = [fits_maildir - 5000, fits_maildir - 1, fits_maildir, fits_maildir + 1, fits_maildir + 2,
             (fits_maildir + fits_queue) // 2, fits_queue - 1, fits_queue, fits_queue + 1, fits_queue + 2,
             LIMIT + 10_000]
    sent = {serial: (size, send(gateway, message(serial, size))) for serial, size in enumerate(sizes, 1)}
    gateway.stop()

    accepted = {serial for serial, (_, code) in sent.items() if code == 250}
    refused = {serial for serial, (_, code) in sent.items() if 400 <= code < 500}
    assert accepted | refused == set(sent), sent  # nothing but 250 or 4xx
    assert accepted and refused, sent
    queued = copies(queue / "msg")
    for serial, (size, code) in sent.items():
        expected = message(serial, size)
        for member in LOCAL_MEMBERS:
            held = copies(mail / "example.test" / member.partition("@")[0] / "new").get(serial, [])
            if serial in accepted:
                assert len(held) == 1 and held[0].endswith(expected), (member, serial, size, len(held))
            else:
                assert held == [], (member, serial, size, code)
        if serial in accepted:
            assert len(queued.get(serial, [])) == 1 and queued[serial][0].endswith(expected), (serial, size)
        else:
            assert serial not in queued, (serial, size, code)
    log = gateway.log()
    assert "maildir: [Errno 27] File too large" in log  # the queue entry was written, then taken back
    assert "queue: [Errno 27] File too large" in log
    leftovers = [p for p in [*mail.rglob("tmp/*"), *(queue / "tmp").glob("*")] if p.is_file()]
    assert leftovers == []
    assert len(list((queue / "env").iterdir())) == len(accepted) + 1  # and the probe's
