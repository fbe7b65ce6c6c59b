"""Tests for mailgate.store.maildir_reader: listing without reading, stable UIDs, CRLF sizes, commit."""

from __future__ import annotations

import builtins
import io
import os
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from mailgate.store import maildir_reader as mailbox
from mailgate.store.maildir_reader import base_name, commit, list_messages, uid_for, wire_size_from_name
from mailgate.core.wire import CRLFConverter

NAME = "1700000000.M123456P42Q7.mx.example.test"


def make_maildir(root: str) -> str:
    path = os.path.join(root, "example.test", "alice")
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(path, sub))
    return path


def put(directory: str, subdir: str, name: str, data: bytes = b"") -> str:
    path = os.path.join(directory, subdir, name)
    with open(path, "wb") as handle:
        handle.write(data)
    return path


def crlf_reference(data: bytes) -> bytes:
    """Slow, obviously right: CRLF, bare LF and bare CR each become one CRLF."""
    out = bytearray()
    index = 0
    while index < len(data):
        byte = data[index]
        if byte == 0x0D and data[index + 1 : index + 2] == b"\n":
            index += 1
        out += b"\r\n" if byte in (0x0A, 0x0D) else bytes([byte])
        index += 1
    return bytes(out)


class NameTests(SynchronousTestCase):
    def test_base_name_drops_sizes_and_flags(self) -> None:
        """Delivery adds S=/W=, readers add :2,flags: neither belongs to the UID."""
        self.assertEqual(base_name(NAME + ",S=10,W=12"), NAME)
        self.assertEqual(base_name(NAME + ",S=10,W=12:2,S"), NAME)
        self.assertEqual(base_name(NAME + ":2,RS"), NAME)
        self.assertEqual(base_name(NAME + ",X=1,W=12"), NAME + ",X=1")

    def test_uid_is_stable_from_new_to_cur(self) -> None:
        self.assertEqual(uid_for(NAME + ",S=10,W=12"), uid_for(NAME + ",S=10,W=12:2,S"))

    def test_uid_is_hashed_when_not_valid_for_uidl(self) -> None:
        """RFC 1939 limits UIDs to 70 printable characters."""
        long_name = "x" * 100
        self.assertEqual(len(uid_for(long_name)), 40)
        self.assertNotIn(" ", uid_for("a b"))
        self.assertNotEqual(uid_for(long_name), uid_for("y" * 100))

    def test_wire_size_from_name(self) -> None:
        self.assertEqual(wire_size_from_name(NAME + ",S=10,W=12"), 12)
        self.assertEqual(wire_size_from_name(NAME + ",S=10,W=12:2,S"), 12)
        self.assertIsNone(wire_size_from_name(NAME + ",S=10"))
        self.assertIsNone(wire_size_from_name(NAME + ":2,W=5"))


class CRLFConverterTests(SynchronousTestCase):
    SAMPLES = [
        b"",
        b"a\nb\n",
        b"a\r\nb\r\n",
        b"mixed\r\nbare\nend",
        b"\r\r\n\n\r",
        b"\n\n.\n..\r\n",
    ]

    def test_every_split_point(self) -> None:
        """A CR at a block end must not turn the next block's LF into CRCRLF."""
        for sample in self.SAMPLES:
            for cut in range(len(sample) + 1):
                converter = CRLFConverter()
                out = converter.feed(sample[:cut]) + converter.feed(sample[cut:]) + converter.finish()
                self.assertEqual(out, crlf_reference(sample), (sample, cut))


class ListTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = tempfile.mkdtemp()
        self.addCleanup(_rmtree, self.root)
        self.directory = make_maildir(self.root)

    def test_missing_mailbox_is_empty(self) -> None:
        self.assertEqual(list_messages(os.path.join(self.root, "nobody")), [])

    def test_missing_subdirectory_is_empty(self) -> None:
        os.rmdir(os.path.join(self.directory, "cur"))
        put(self.directory, "new", NAME + ",S=2,W=3", b"a\n")
        self.assertEqual(len(list_messages(self.directory)), 1)

    def test_new_and_cur_in_delivery_order(self) -> None:
        put(self.directory, "cur", "1000.M1P1Q1.h,S=2,W=3:2,S", b"a\n")
        put(self.directory, "new", "999.M1P1Q1.h,S=2,W=3", b"a\n")
        put(self.directory, "new", ".hidden", b"")
        messages = list_messages(self.directory)
        self.assertEqual([(m.subdir, m.uid) for m in messages], [("new", "999.M1P1Q1.h"), ("cur", "1000.M1P1Q1.h")])
        self.assertEqual([m.size for m in messages], [3, 3])

    def test_size_without_w_counts_crlf(self) -> None:
        """Files from other tools lack W=: stat size plus bare line ends."""
        put(self.directory, "new", "1.M1P1Q1.other", b"Subject: x\n\nline\r\nlast")
        put(self.directory, "cur", "2.M1P1Q1.other,S=5:2,", b"a\nb\n.")
        sizes = [m.size for m in list_messages(self.directory)]
        self.assertEqual(sizes, [len(b"Subject: x\r\n\r\nline\r\nlast"), len(b"a\r\nb\r\n.")])

    def test_listing_twenty_thousand_opens_nothing(self) -> None:
        """Listing must never read a message: the sizes come from W= in the name."""
        new = os.path.join(self.directory, "new")
        for n in range(20_000):
            fd = os.open(os.path.join(new, f"{1700000000 + n}.M{n}P1Q{n}.h,S={n},W={n + 7}"), os.O_CREAT | os.O_WRONLY, 0)
            os.close(fd)

        def forbidden(*args: object, **kwargs: object) -> None:
            raise AssertionError(f"opened {args[0]!r}")

        self.patch(builtins, "open", forbidden)
        self.patch(io, "open", forbidden)
        self.patch(os, "open", forbidden)
        messages = list_messages(self.directory)
        self.assertEqual(len(messages), 20_000)
        self.assertEqual(messages[0].size, 7)
        self.assertEqual(messages[-1].size, 19_999 + 7)
        self.assertEqual(len({m.uid for m in messages}), 20_000)

    def test_duplicate_unique_names_get_distinct_uids(self) -> None:
        put(self.directory, "new", NAME + ",S=2,W=3", b"a\n")
        put(self.directory, "cur", NAME + ",S=2,W=3:2,S", b"a\n")
        self.assertEqual(len({m.uid for m in list_messages(self.directory)}), 2)


class CommitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = tempfile.mkdtemp()
        self.addCleanup(_rmtree, self.root)
        self.directory = make_maildir(self.root)
        put(self.directory, "new", "1.M1P1Q1.h,S=2,W=3", b"a\n")
        put(self.directory, "new", "2.M1P1Q1.h,S=2,W=3", b"b\n")
        put(self.directory, "cur", "3.M1P1Q1.h,S=2,W=3:2,S", b"c\n")
        self.messages = list_messages(self.directory)

    def test_delete_and_mark_seen(self) -> None:
        first, second, third = self.messages
        self.assertEqual(commit(self.directory, [third], [first, second, third]), [])
        self.assertEqual(os.listdir(os.path.join(self.directory, "new")), [])
        self.assertEqual(
            sorted(os.listdir(os.path.join(self.directory, "cur"))),
            ["1.M1P1Q1.h,S=2,W=3:2,S", "2.M1P1Q1.h,S=2,W=3:2,S"],
        )
        after = list_messages(self.directory)
        self.assertEqual([m.uid for m in after], [first.uid, second.uid])

    def test_deleted_and_retrieved_is_just_deleted(self) -> None:
        first = self.messages[0]
        self.assertEqual(commit(self.directory, [first], [first]), [])
        self.assertEqual(len(list_messages(self.directory)), 2)

    def test_already_gone_counts_as_deleted(self) -> None:
        first = self.messages[0]
        os.unlink(first.path(self.directory))
        self.assertEqual(commit(self.directory, [first], []), [])

    def test_failed_delete_is_reported(self) -> None:
        def refuse(path: str) -> None:
            raise PermissionError(path)

        self.patch(mailbox.os, "unlink", refuse)
        self.assertEqual(commit(self.directory, self.messages[:1], []), self.messages[:1])


def _rmtree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def test_messages_of_one_second_sort_by_microseconds_as_numbers(tmp_path) -> None:
    directory = make_maildir(str(tmp_path))
    later = "1700000000.M100000P1Q2.host,S=2,W=3"
    earlier = "1700000000.M99999P1Q1.host,S=2,W=3"
    put(directory, "new", later, b"b\n")
    put(directory, "new", earlier, b"a\n")
    assert [m.name for m in list_messages(directory)] == [earlier, later]
