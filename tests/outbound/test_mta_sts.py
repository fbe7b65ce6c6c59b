"""MTA-STS policies and TXT records as RFC 8461 spells them."""

from __future__ import annotations

import pytest

from mailgate.outbound.mta_sts import MAX_AGE_LIMIT, PolicyError, parse_policy, txt_id


def test_txt_record_id() -> None:
    assert txt_id(["v=STSv1; id=20160831085700Z;"]) == "20160831085700Z"
    assert txt_id(["something else", "v=STSv1;id=abc"]) == "abc"
    assert txt_id([]) is None
    assert txt_id(["v=STSv1; id=a", "v=STSv1; id=b"]) is None  # several: no policy (RFC 8461 3.1)
    assert txt_id(["v=STSv1; id=not-alnum!"]) is None


def test_policy_file_and_mx_patterns() -> None:
    policy = parse_policy("example.com", "1", "version: STSv1\nmode: enforce\nmx: mail.example.com\n"
                          "mx: *.example.net\r\nmax_age: 99999999999\n", 1000.0)
    assert (policy.mode, policy.mx, policy.max_age) == ("enforce", ("mail.example.com", "*.example.net"),
                                                        MAX_AGE_LIMIT)
    assert policy.matches("MAIL.example.com.") and policy.matches("mx1.example.net")
    assert not policy.matches("a.b.example.net") and not policy.matches("example.net")
    assert policy.valid(1000.0 + MAX_AGE_LIMIT - 1) and not policy.valid(1000.0 + MAX_AGE_LIMIT)


@pytest.mark.parametrize("text", [
    "version: STSv2\nmode: enforce\nmx: a\nmax_age: 1\n",
    "version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n",
    "version: STSv1\nmode: enforce\nmax_age: 1\n",
    "version: STSv1\nmode: enforce\nmx: a\nmax_age: soon\n",
])
def test_bad_policies_are_refused(text: str) -> None:
    with pytest.raises(PolicyError):
        parse_policy("example.com", "1", text, 0.0)
