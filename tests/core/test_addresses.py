"""Tests for mailgate.core.addresses: MAIL FROM / RCPT TO paths into safe, lower-cased addresses."""

from __future__ import annotations

import pytest

from mailgate.core.addresses import (
    MAX_LOCAL_PART, AddressError, display_domain, normalize_domain, normalize_mailbox, parse_command_path,
)


def mailbox(argument: str, prefix: str = "TO") -> str:
    path, params = parse_command_path(argument, prefix)
    assert params == {}
    return normalize_mailbox(path)


# --- parse_command_path ------------------------------------------------------


def test_mail_from_with_parameters() -> None:
    assert parse_command_path("FROM:<a@example.test> SIZE=100 BODY=8BITMIME", "FROM") == (
        "a@example.test",
        {"SIZE": "100", "BODY": "8BITMIME"},
    )


def test_parameter_names_are_upper_cased_and_may_lack_a_value() -> None:
    assert parse_command_path("TO:<a@example.test> notify=NEVER RET", "TO") == (
        "a@example.test",
        {"NOTIFY": "NEVER", "RET": None},
    )


def test_prefix_is_case_insensitive_and_a_space_after_the_colon_is_tolerated() -> None:
    assert parse_command_path("from: <a@example.test>", "FROM") == ("a@example.test", {})
    assert parse_command_path("To:<a@example.test>", "TO") == ("a@example.test", {})


def test_null_sender() -> None:
    assert parse_command_path("FROM:<>", "FROM") == ("", {})
    assert parse_command_path("FROM:<> BODY=7BIT", "FROM") == ("", {"BODY": "7BIT"})


@pytest.mark.parametrize(
    "argument",
    ["FROM:a@example.test", "FROM:<a@example.test", "FROM:", "FROM:a@example.test>"],
)
def test_missing_brackets_refused(argument: str) -> None:
    with pytest.raises(AddressError, match="enclosed in <>"):
        parse_command_path(argument, "FROM")


@pytest.mark.parametrize("argument", ["<a@example.test>", "TO:<a@example.test>", "FRM:<a@b.test>"])
def test_wrong_or_missing_prefix_refused(argument: str) -> None:
    with pytest.raises(AddressError, match="Syntax: MAIL FROM"):
        parse_command_path(argument, "FROM")


def test_rcpt_syntax_message_names_rcpt() -> None:
    with pytest.raises(AddressError, match="Syntax: RCPT TO"):
        parse_command_path("FROM:<a@b.test>", "TO")


def test_quoted_local_part_may_hold_angle_bracket_and_spaces() -> None:
    path, params = parse_command_path('TO:<"a> b c"@example.test> NOTIFY=NEVER', "TO")
    assert path == '"a> b c"@example.test'
    assert params == {"NOTIFY": "NEVER"}
    assert normalize_mailbox(path) == '"a> b c"@example.test'


@pytest.mark.parametrize(("path", "mailbox"), [
    ('"alice"@Example.TEST', "alice@example.test"),
    ('"first.last"@example.test', "first.last@example.test"),
    ('"a b"@example.test', '"a b"@example.test'),  # needs its quotes
    ('"a..b"@example.test', '"a..b"@example.test'),  # not a dot-atom
    ('""@example.test', '""@example.test'),
])
def test_quotes_that_change_nothing_are_dropped(path: str, mailbox: str) -> None:
    assert normalize_mailbox(path) == mailbox


def test_escaped_quote_inside_quoted_local_part_does_not_end_it() -> None:
    path, _ = parse_command_path(r'TO:<"a\">"@example.test>', "TO")
    assert path == r'"a\">"@example.test'


@pytest.mark.parametrize("word", ["SIZE==1", "=x", "-X=1", "BODY=a=b", "S\x7fZE=1"])
def test_bad_parameter_syntax_refused(word: str) -> None:
    with pytest.raises(AddressError, match="Bad parameter syntax"):
        parse_command_path(f"FROM:<a@example.test> {word}", "FROM")


# --- normalize_mailbox -------------------------------------------------------


def test_lower_cases_local_part_and_domain() -> None:
    assert mailbox("TO:<Alice.Smith@Example.TEST>") == "alice.smith@example.test"


def test_trailing_dot_of_domain_dropped() -> None:
    assert mailbox("TO:<a@example.test.>") == "a@example.test"


@pytest.mark.parametrize("path", ["<@a.test,@b.test:user@c.test>", "<@a.test:user@c.test>"])
def test_source_routes_are_dropped(path: str) -> None:
    """RFC 5321 appendix C: the route is ignored, the mailbox kept."""
    assert mailbox(f"TO:{path}") == "user@c.test"


def test_domain_literal() -> None:
    assert mailbox("TO:<postmaster@[127.0.0.1]>") == "postmaster@[127.0.0.1]"


def test_percent_hack_is_one_plain_local_part() -> None:
    assert mailbox("TO:<b%c@example.test>") == "b%c@example.test"


@pytest.mark.parametrize(
    "path",
    [
        "a/b@example.test",
        "../x@example.test",
        '"a/b"@example.test',
        '"a\\b"@example.test',
        "a@[/etc]",
        "a@[127.0.0.1/8]",
    ],
)
def test_slash_refused_everywhere(path: str) -> None:
    """'/' would be a path separator in the Maildir layout."""
    with pytest.raises(AddressError):
        normalize_mailbox(path)


@pytest.mark.parametrize(
    "path",
    [
        "",
        "plain",
        "a@",
        "@example.test",
        ".a@example.test",
        "a.@example.test",
        "a..b@example.test",
        "a b@example.test",
        "a@-example.test",
        "a@example..test",
        "a@b@example.test",
        "a@example_test",
    ],
)
def test_bad_syntax_refused(path: str) -> None:
    with pytest.raises(AddressError, match="syntax"):
        normalize_mailbox(path)


@pytest.mark.parametrize("path, normalized", [
    ("jürgen@example.test", "jürgen@example.test"), ("JÜRGEN@Example.TEST", "jürgen@example.test"),
    ("ju\u0308rgen@example.test", "jürgen@example.test"),  # NFC: one mailbox however it is composed
    ("a@exämple.test", "a@xn--exmple-cua.test"), ("a@EXÄMPLE.test", "a@xn--exmple-cua.test"),
    ("a@xn--exmple-cua.test", "a@xn--exmple-cua.test"), ("a@例え.test", "a@xn--r8jz45g.test"),
    ('"jo sé"@example.test', '"jo sé"@example.test'),
])
def test_utf8_addresses_are_normalized(path: str, normalized: str) -> None:
    """SMTPUTF8 (RFC 6531): UTF-8 local parts NFC, domains as A-labels, so either form is one mailbox."""
    assert normalize_mailbox(path) == normalized


@pytest.mark.parametrize("path", ["a\u202eb@example.test", "a\u00a0b@example.test", "a\x85b@example.test",
                                  "a@xn--zz.test", "a@ex\u00e4mple..test", "\u00e9" * 33 + "@example.test",
                                  "a@\u2028.test"])
def test_bad_utf8_addresses_refused(path: str) -> None:
    with pytest.raises(AddressError):
        normalize_mailbox(path)


def test_domains_in_either_form_are_one() -> None:
    assert normalize_domain("Bücher.Example") == normalize_domain("xn--bcher-kva.example") == "xn--bcher-kva.example"
    assert display_domain("xn--bcher-kva.example") == "bücher.example"


def test_local_part_length_limit() -> None:
    assert normalize_mailbox("x" * MAX_LOCAL_PART + "@example.test") == "x" * 64 + "@example.test"
    with pytest.raises(AddressError, match="Local part too long"):
        normalize_mailbox("x" * (MAX_LOCAL_PART + 1) + "@example.test")


def test_path_length_limit() -> None:
    """256 octets including the angle brackets (RFC 5321 4.5.3.1.3)."""
    domain = ".".join(["d" * 60] * 4)  # 243 octets
    ok = "a" * (254 - len(domain) - 1) + "@" + domain
    assert len(ok) == 254
    assert normalize_mailbox(ok) == ok
    with pytest.raises(AddressError, match="too long"):
        normalize_mailbox("a" + ok)
