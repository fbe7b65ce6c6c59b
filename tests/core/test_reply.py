"""Reply: parsing, validation, wire form; DeliveryError carries one."""

from __future__ import annotations

import pytest

from mailgate.core.errors import DeliveryError, PermanentFailure, TemporaryFailure
from mailgate.core.reply import Reply, ReplyError


def test_parse_splits_code_enhanced_code_and_text() -> None:
    assert Reply.parse("550 5.7.1 not here") == Reply(550, "5.7.1", "not here")
    assert Reply.parse("250 mx.example.test") == Reply(250, "", "mx.example.test")
    assert Reply.parse("334 ") == Reply(334, "", "")


@pytest.mark.parametrize("line", ["", "hello", "150 too low", "650 too high", "55 short", "5500 long"])
def test_parse_refuses_what_is_not_a_reply(line: str) -> None:
    with pytest.raises(ReplyError):
        Reply.parse(line)


def test_an_enhanced_code_of_another_class_is_text() -> None:
    """RFC 3463 2: the class must match the reply code's first digit."""
    assert Reply.parse("550 4.7.1 odd") == Reply(550, "", "4.7.1 odd")
    with pytest.raises(ReplyError):
        Reply(550, "4.7.1", "odd")


def test_wire_puts_the_enhanced_code_on_every_line() -> None:
    """RFC 2034: each line of a multi-line reply carries the enhanced code."""
    assert Reply(250, "2.1.5", "<a@x.test>\n<b@x.test>").wire() == b"250-2.1.5 <a@x.test>\r\n250 2.1.5 <b@x.test>\r\n"
    assert Reply(250, "", "mx.test\nPIPELINING").wire() == b"250-mx.test\r\n250 PIPELINING\r\n"
    assert Reply(334, "", "").wire() == b"334 \r\n"


def test_from_lines_takes_the_enhanced_code_off_each_line() -> None:
    reply = Reply.from_lines(250, ["2.0.0 first", "2.0.0 second"])
    assert (reply.enhanced, reply.text, reply.one_line, str(reply)) == (
        "2.0.0", "first\nsecond", "first second", "250 2.0.0 first second")


def test_reason_never_reaches_the_wire() -> None:
    reply = Reply(451, "4.3.0", "try later", reason="/var/mail: EIO")
    assert b"/var/mail" not in reply.wire() and "/var/mail" not in str(reply)


def test_kinds() -> None:
    assert [Reply(250).positive, Reply(451).temporary, Reply(550).permanent] == [True, True, True]
    assert not Reply(354).temporary and not Reply(354).positive


def test_delivery_errors_carry_their_reply() -> None:
    error = TemporaryFailure("Mailbox busy", code=450, enhanced="4.2.1", reason="locked by pid 7")
    assert error.reply == Reply(450, "4.2.1", "Mailbox busy", "locked by pid 7")
    assert (error.code, error.enhanced, error.text, error.reason, error.permanent) == (
        450, "4.2.1", "Mailbox busy", "locked by pid 7", False)
    assert str(PermanentFailure().reply) == "554 5.3.0 Delivery failed permanently"


def test_from_reply_picks_the_kind_by_code() -> None:
    assert isinstance(DeliveryError.from_reply(Reply(550, "5.1.1", "no")), PermanentFailure)
    temporary = DeliveryError.from_reply(Reply(421, "4.7.0", "later", reason="why"))
    assert isinstance(temporary, TemporaryFailure) and temporary.reply == Reply(421, "4.7.0", "later", "why")
