"""Session and Envelope: the session's facts survive the spool; the 0.1 names still read."""

from __future__ import annotations

from mailgate.core.session import Envelope, Session


def test_session_round_trips_through_a_dict() -> None:
    session = Session(peer="192.0.2.1", helo="c.test", user="a@example.test", tls=True, listener="submission")
    assert Session.from_dict(session.to_dict()) == session
    assert Session.from_dict({"peer": "192.0.2.1", "from_a_newer_version": 1}) == Session(peer="192.0.2.1")


def test_envelope_reads_the_0_1_names_from_its_session() -> None:
    envelope = Envelope("a@x.test", ["b@y.test"], session=Session("192.0.2.1", "c.test", "u@x.test", False, "mx"))
    assert (envelope.client_ip, envelope.helo, envelope.authenticated_as, envelope.listener) == (
        "192.0.2.1", "c.test", "u@x.test", "mx")
