"""The queue honours RFC 3461: NOTIFY decides which reports go, RET and ENVID shape them, a next hop is told."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailgate.core.dsn import DSNRequest
from tests.outbound.test_scheduler import Harness

BOB = "b@remote.test"
ORCPT = "rfc822;bob+2Bold@remote.test"


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path, {"delay_warning": "4m"})


def test_the_parameters_are_queued_per_recipient_and_passed_to_the_transport(harness: Harness) -> None:
    harness.relay.codes[BOB] = [451]
    harness.submit([(BOB, "mx"), ("c@remote.test", "mx")], parameters={"RET": "HDRS", "ENVID": "e1"},
                   recipient_parameters={BOB: {"NOTIFY": "SUCCESS,FAILURE", "ORCPT": ORCPT}})
    entry = harness.store.load("Q1")
    assert [(r.notify, r.orcpt) for r in entry.recipients] == [("SUCCESS,FAILURE", ORCPT), (None, None)]
    [options] = harness.relay.options
    assert options["dsn"] == DSNRequest(("RET=HDRS", "ENVID=e1"), {BOB: ("NOTIFY=SUCCESS,FAILURE", f"ORCPT={ORCPT}")})


def test_notify_never_sends_no_bounce(harness: Harness) -> None:
    harness.relay.codes[BOB] = [550]
    harness.submit([(BOB, "mx")], recipient_parameters={BOB: {"NOTIFY": "NEVER"}})
    assert harness.injected == []
    assert harness.store.load("Q1") is None


def test_notify_without_failure_sends_no_bounce(harness: Harness) -> None:
    harness.relay.codes[BOB] = [550]
    harness.submit([(BOB, "mx")], recipient_parameters={BOB: {"NOTIFY": "DELAY"}})
    assert harness.injected == []


def test_a_bounce_names_only_the_recipients_that_asked_for_it(harness: Harness) -> None:
    harness.relay.codes[BOB] = [550]
    harness.relay.codes["c@remote.test"] = [550]
    harness.submit([(BOB, "mx"), ("c@remote.test", "mx")], recipient_parameters={BOB: {"NOTIFY": "NEVER"}})
    [(_, report, report_id)] = harness.injected
    assert report_id == "Q1B"
    assert b"Final-Recipient: rfc822; c@remote.test" in report and b"b@remote.test" not in report


@pytest.mark.parametrize("notify, warned", [(None, True), ("DELAY", True), ("FAILURE", False), ("NEVER", False),
                                            ("SUCCESS,DELAY", True)])
def test_delay_governs_delay_warnings(harness: Harness, notify: str | None, warned: bool) -> None:
    harness.relay.codes[BOB] = [451]
    harness.submit([(BOB, "mx")], recipient_parameters={BOB: {"NOTIFY": notify}} if notify else None)
    for _ in range(4):
        harness.clock.advance(330)
    assert [report_id for _, _, report_id in harness.injected] == (["Q1W"] if warned else [])


@pytest.mark.parametrize("action", ["delivered", "relayed"])
def test_notify_success_reports_the_delivery(harness: Harness, action: str) -> None:
    harness.relay.success_action = action
    harness.submit([(BOB, "mx"), ("c@remote.test", "mx")], parameters={"ENVID": "env+2B1"},
                   recipient_parameters={BOB: {"NOTIFY": "SUCCESS", "ORCPT": ORCPT}})
    [(envelope, report, report_id)] = harness.injected
    assert (envelope.mail_from, envelope.rcpt_to, report_id) == ("", ["alice@example.test"], "Q1S")
    assert f"Action: {action}".encode() in report and b"Status: 2.0.0" in report
    assert b"Original-Recipient: rfc822;bob+old@remote.test" in report
    assert b"Original-Envelope-Id: env+1" in report
    assert b"Successful Mail Delivery Report" in report
    assert b"c@remote.test" not in report.split(b"message/delivery-status")[1].split(b"rfc822-headers")[0]
    assert b"line one" not in report  # a success report returns the headers only


def test_no_success_report_when_the_next_hop_reports_itself(harness: Harness) -> None:
    harness.relay.success_action = None
    harness.submit([(BOB, "mx")], recipient_parameters={BOB: {"NOTIFY": "SUCCESS"}})
    assert harness.injected == []


@pytest.mark.parametrize("ret, whole", [("HDRS", False), ("FULL", True), (None, True)])
def test_ret_decides_what_a_bounce_returns(harness: Harness, ret: str | None, whole: bool) -> None:
    harness.relay.codes[BOB] = [550]
    harness.submit([(BOB, "mx")], parameters={"RET": ret} if ret else None)
    [(_, report, _)] = harness.injected
    assert (b"line one" in report) == whole
    assert (b"text/rfc822-headers" in report) == (not whole)
