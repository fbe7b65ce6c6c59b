"""The Authentication-Results field: written by mailgate, read back (RFC 8601), and the header helpers."""

from __future__ import annotations

from mailgate import authentication_results
from mailgate.mailauth.headers import from_domains, header_fields, without_fields
from mailgate.mailauth.results import DKIMResult, DMARCResult, Results, SPFResult, claims, parse

RESULTS = Results(
    spf=SPFResult("permerror", "mailfrom", "bob@remote.test", "remote.test", "more than 10 DNS lookups"),
    dkim=(DKIMResult("pass", "remote.test", "s1"), DKIMResult("fail", "other.test", "s2", "body hash mismatch")),
    dmarc=DMARCResult("pass", "remote.test", "reject"),
)


def test_the_field_is_written_one_result_a_line() -> None:
    assert RESULTS.header_value("mx.example.test") == (
        "mx.example.test;\r\n"
        "\tspf=permerror (more than 10 DNS lookups) smtp.mailfrom=bob@remote.test;\r\n"
        "\tdkim=pass header.d=remote.test header.s=s1;\r\n"
        "\tdkim=fail (body hash mismatch) header.d=other.test header.s=s2;\r\n"
        "\tdmarc=pass (p=reject) header.from=remote.test")
    assert Results(dkim=()).header_value("a.test") == "a.test;\r\n\tdkim=none"
    assert Results().header_value("a.test") == "a.test;\r\n\tnone"


def test_it_reads_back_as_the_webhook_json_gives_it() -> None:
    message = f"Received: x\r\nAuthentication-Results: {RESULTS.header_value('mx.example.test')}\r\n" \
              "From: bob@remote.test\r\n\r\nbody\r\n"
    assert authentication_results(message.encode(), "MX.example.test") == RESULTS.as_json() == {
        "spf": "permerror",
        "dkim": [{"domain": "remote.test", "selector": "s1", "result": "pass"},
                 {"domain": "other.test", "selector": "s2", "result": "fail"}],
        "dmarc": "pass",
    }
    assert authentication_results(message.encode(), "other.test") is None
    lf = message.replace("\r\n", "\n").encode()
    assert authentication_results(lf, "mx.example.test") == RESULTS.as_json()


def test_other_writers_fields_parse_too() -> None:
    authserv, found = parse('example.org 1; (comment) dkim = pass (good) header.i="@a;b.test" ; spf=fail '
                            'smtp.mailfrom=x@y.test')
    assert authserv == "example.org"
    assert found == [("dkim", "pass", {"header.i": "@a;b.test"}), ("spf", "fail", {"smtp.mailfrom": "x@y.test"})]
    assert claims(b" (a comment) MX.example.test;\r\n spf=pass", "mx.example.test")
    assert not claims(b" mx.example.test.evil; spf=pass", "mx.example.test")


def test_header_fields_their_removal_and_the_from_domain() -> None:
    message = (b"From: \"A, B\" <a@Example.TEST>\r\nX-A: 1\r\n continued\r\nAuthentication-Results: x; none\r\n"
               b"\r\nFrom: body@not.header\r\n")
    assert [field.name for field in header_fields(message)] == ["from", "x-a", "authentication-results"]
    assert from_domains(message) == ["example.test"]
    assert without_fields(message, lambda field: field.name == "x-a") == (
        b"From: \"A, B\" <a@Example.TEST>\r\nAuthentication-Results: x; none\r\n\r\nFrom: body@not.header\r\n")
    assert without_fields(message, lambda field: field.name == "subject") is None  # nothing copied
    assert from_domains(b"From: a@x.test, b@y.test\r\n\r\n") == ["x.test", "y.test"]
    assert from_domains(b"Subject: none\r\n\r\n") == []
