"""Tests for mailgate.outbound.dsn: RFC 3464 bounces and delay warnings, parsed back as a mail client would."""

from __future__ import annotations

import email
from datetime import datetime, timedelta, timezone
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailgate.outbound.dsn import RecipientStatus, build_dsn

MTA = "mx.example.org"
SENDER = "alice@example.org"
ARRIVAL = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
NOW = ARRIVAL + timedelta(hours=5)
ORIGINAL = b"From: alice@example.org\nTo: bob@remote.test\nSubject: lunch\n\nSECRET-BODY line\n"
BOB = RecipientStatus(
    "bob@remote.test", "failed", "5.1.1", "550 5.1.1 <bob@remote.test>: user unknown",
    remote_mta="mx.remote.test", original_recipient="Bob@remote.test", last_attempt=NOW,
)
CAROL = RecipientStatus(
    "carol@remote.test", "delayed", "4.4.1", "connection timed out",
    last_attempt=NOW, will_retry_until=ARRIVAL + timedelta(days=5),
)
DAVE = RecipientStatus("dave@other.test", "failed", "5.4.4", "no route to domain other.test")


def dsn(statuses=(BOB,), original: bytes | str = ORIGINAL, **kwargs) -> bytes:
    args = dict(reporting_mta=MTA, sender=SENDER, statuses=list(statuses), original=original,
                arrival=ARRIVAL, queue_id="Q42", now=NOW)
    return build_dsn(**{**args, **kwargs})


def parse(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=policy.default)


def blocks(raw: bytes) -> list[EmailMessage]:
    return parse(raw).get_payload()[1].get_payload()


def test_is_a_multipart_report_with_three_parts_in_order() -> None:
    report = parse(dsn())
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    types = [part.get_content_type() for part in report.iter_parts()]
    assert types == ["text/plain", "message/delivery-status", "message/rfc822"]


def test_top_level_headers() -> None:
    report = parse(dsn())
    assert report["From"].addresses[0].display_name == "Mail Delivery System"
    assert report["From"].addresses[0].addr_spec == f"MAILER-DAEMON@{MTA}"
    assert report["To"].addresses[0].addr_spec == SENDER
    assert report["Subject"] == "Undelivered Mail Returned to Sender"
    assert report["Date"].datetime == NOW
    assert report["Message-ID"].startswith("<") and report["Message-ID"].endswith(f"@{MTA}>")
    assert report["Auto-Submitted"] == "auto-replied"
    assert report["MIME-Version"] == "1.0"
    assert "Return-Path" not in report


def test_message_ids_differ_between_reports() -> None:
    assert parse(dsn())["Message-ID"] != parse(dsn())["Message-ID"]


def test_subject_variants() -> None:
    assert parse(dsn([CAROL]))["Subject"] == "Delayed Mail (still being retried)"
    assert parse(dsn([CAROL, BOB]))["Subject"] == "Undelivered Mail Returned to Sender"


def test_explanation_is_what_a_client_shows() -> None:
    text = parse(dsn([BOB, DAVE])).get_body(preferencelist=("plain",)).get_content()
    assert f"mail system at host {MTA}" in text
    assert "could not be delivered" in text
    assert "<bob@remote.test>: host mx.remote.test said: 550 5.1.1" in text
    assert "user unknown" in text
    assert "<dave@other.test>: no route to domain other.test" in text


def test_delay_warning_explanation_says_it_is_only_a_warning() -> None:
    text = parse(dsn([CAROL])).get_body(preferencelist=("plain",)).get_content()
    assert "WARNING ONLY" in text
    assert "could not be delivered" not in text
    assert "(still trying until Mon, 06 May 2024 12:00:00 +0000)" in " ".join(text.split())


def test_per_message_block() -> None:
    first = blocks(dsn())[0]
    assert first["Reporting-MTA"] == f"dns; {MTA}"
    assert first["X-Mailgate-Queue-ID"] == "Q42"
    assert first["Arrival-Date"] == "Wed, 01 May 2024 12:00:00 +0000"
    assert "Final-Recipient" not in first


def test_one_block_per_recipient_in_order() -> None:
    found = blocks(dsn([BOB, CAROL, DAVE]))
    assert len(found) == 4
    assert [b["Final-Recipient"] for b in found[1:]] == [
        "rfc822; bob@remote.test", "rfc822; carol@remote.test", "rfc822; dave@other.test"]
    assert [b["Action"] for b in found[1:]] == ["failed", "delayed", "failed"]
    assert [b["Status"] for b in found[1:]] == ["5.1.1", "4.4.1", "5.4.4"]


def test_recipient_fields_when_known() -> None:
    bob = blocks(dsn([BOB]))[1]
    assert bob["Original-Recipient"] == "rfc822; Bob@remote.test"
    assert bob["Remote-MTA"] == "dns; mx.remote.test"
    assert bob["Diagnostic-Code"] == "smtp; 550 5.1.1 <bob@remote.test>: user unknown"
    assert bob["Last-Attempt-Date"] == "Wed, 01 May 2024 17:00:00 +0000"
    assert "Will-Retry-Until" not in bob


def test_optional_recipient_fields_are_omitted() -> None:
    dave = blocks(dsn([DAVE]))[1]
    for name in ("Original-Recipient", "Remote-MTA", "Last-Attempt-Date", "Will-Retry-Until"):
        assert name not in dave
    assert dave["Diagnostic-Code"] == "smtp; no route to domain other.test"


def test_delayed_recipient_has_will_retry_until() -> None:
    carol = blocks(dsn([CAROL]))[1]
    assert carol["Will-Retry-Until"] == "Mon, 06 May 2024 12:00:00 +0000"


def test_will_retry_until_is_dropped_for_failed_recipients() -> None:
    failed = RecipientStatus("e@x.test", "failed", "5.4.7", "expired", will_retry_until=NOW)
    assert "Will-Retry-Until" not in blocks(dsn([failed]))[1]


def test_delivery_status_is_header_blocks_on_the_wire() -> None:
    """Blank-line-separated blocks, not base64, not one merged block."""
    raw = dsn([BOB, DAVE])
    section = raw.split(b"Content-Type: message/delivery-status\n\n", 1)[1].split(b"\n--", 1)[0]
    chunks = section.strip(b"\n").split(b"\n\n")
    assert [c.split(b"\n", 1)[0] for c in chunks] == [
        b"Reporting-MTA: dns; mx.example.org",
        b"Final-Recipient: rfc822; bob@remote.test",
        b"Final-Recipient: rfc822; dave@other.test",
    ]


def test_compat32_parser_also_sees_separate_blocks() -> None:
    status = email.message_from_bytes(dsn([BOB, CAROL])).get_payload()[1]
    assert [b.get("Final-Recipient") for b in status.get_payload()] == [
        None, "rfc822; bob@remote.test", "rfc822; carol@remote.test"]


def test_long_diagnostic_is_folded_without_encoded_words() -> None:
    reply = "550 5.1.1 <" + "x" * 120 + "@remote.test>: recipient address rejected " * 3
    status = RecipientStatus("bob@remote.test", "failed", "5.1.1", reply)
    raw = dsn([status])
    assert b"=?" not in raw
    assert all(len(line) <= 998 for line in raw.split(b"\n"))
    assert str(blocks(raw)[1]["Diagnostic-Code"]) == "smtp; " + " ".join(reply.split())


def test_multiline_and_non_ascii_diagnostic_stays_one_7bit_field() -> None:
    status = RecipientStatus("jörg@ü.test", "failed", "5.1.1", "550-nö such\r\n550 user")
    block = blocks(dsn([status]))[1]
    assert block["Diagnostic-Code"] == "smtp; 550-n\\x{00F6} such 550 user"
    assert block["Final-Recipient"] == "utf-8; j\\x{00F6}rg@\\x{00FC}.test"


def test_full_original_at_the_limit_is_attached_unchanged() -> None:
    raw = dsn(full_message_limit=len(ORIGINAL))
    returned = parse(raw).get_payload()[2]
    assert returned.get_content_type() == "message/rfc822"
    assert returned["Content-Transfer-Encoding"] == "7bit"
    assert returned.get_content()["Subject"] == "lunch"
    assert ORIGINAL + b"\n--" in raw


def test_original_over_the_limit_sends_headers_only() -> None:
    raw = dsn(full_message_limit=len(ORIGINAL) - 1)
    returned = parse(raw).get_payload()[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    assert "Subject: lunch" in returned.get_content()
    assert b"SECRET-BODY" not in raw


def test_original_read_from_a_path(tmp_path: Path) -> None:
    stored = tmp_path / "Q42"
    stored.write_bytes(ORIGINAL)
    assert b"SECRET-BODY" in dsn(original=str(stored))
    headers_only = dsn(original=str(stored), full_message_limit=10)
    assert b"SECRET-BODY" not in headers_only
    assert b"Subject: lunch" in headers_only


def test_headerless_original_never_leaks_its_body() -> None:
    raw = dsn(original=b"\nSECRET-BODY\n", full_message_limit=5)
    assert b"SECRET-BODY" not in raw
    assert parse(raw).get_payload()[2].get_content_type() == "text/rfc822-headers"


def test_8bit_utf8_original_is_attached_as_8bit() -> None:
    original = "Subject: héllo\nContent-Type: text/plain; charset=utf-8\n\nbödy ✓\n".encode()
    raw = dsn(original=original)
    returned = parse(raw).get_payload()[2]
    assert returned["Content-Transfer-Encoding"] == "8bit"
    assert returned.get_content()["Subject"] == "héllo"
    assert returned.get_content().get_content() == "bödy ✓\n"
    assert original in raw


def test_8bit_original_over_the_limit_keeps_8bit_headers() -> None:
    original = "Subject: héllo\n\nbödy\n".encode()
    returned = parse(dsn(original=original, full_message_limit=3)).get_payload()[2]
    assert returned["Content-Transfer-Encoding"] == "8bit"
    assert returned.get_content_type() == "text/rfc822-headers"


def test_original_the_email_package_cannot_rewrite_falls_back_to_headers() -> None:
    """An 8-bit multipart without a boundary makes the stdlib generator raise."""
    original = b"Subject: broken\nContent-Type: multipart/mixed\n\nSECRET-BODY \xff\n"
    raw = dsn(original=original)
    returned = parse(raw).get_payload()[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    assert b"Subject: broken" in raw and b"SECRET-BODY" not in raw


def test_output_has_lf_line_ends_only() -> None:
    raw = dsn([BOB, CAROL], original=ORIGINAL.replace(b"\n", b"\r\n"))
    assert b"\r" not in raw
    assert ORIGINAL in raw


def test_everything_but_the_original_is_7bit() -> None:
    original = "Subject: héllo\n\nbödy\n".encode()
    status = RecipientStatus("jörg@ü.test", "failed", "5.1.1", "550 nö")
    raw = dsn([status], original=original)
    assert original in raw
    assert raw.replace(original, b"").isascii()
    assert "jörg@ü.test" in parse(raw).get_body(preferencelist=("plain",)).get_content()


def test_naive_datetimes_are_taken_as_utc() -> None:
    report = parse(dsn(arrival=datetime(2024, 5, 1, 12, 0), now=datetime(2024, 5, 1, 13, 0)))
    assert report["Date"].datetime == datetime(2024, 5, 1, 13, 0, tzinfo=timezone.utc)
    assert report.get_payload()[1].get_payload()[0]["Arrival-Date"].endswith("+0000")


def test_null_sender_is_refused() -> None:
    with pytest.raises(ValueError, match="null sender"):
        dsn(sender="")


def test_no_statuses_is_refused() -> None:
    with pytest.raises(ValueError):
        dsn([])


def test_unknown_action_is_refused() -> None:
    with pytest.raises(ValueError, match="action"):
        RecipientStatus("bob@remote.test", "expanded", "2.0.0", "250 ok")
