"""SPF record syntax and macro expansion (RFC 7208 sections 4.6, 5, 7, 12), without DNS."""

from __future__ import annotations

import pytest

from mailgate.mailauth.spf_record import MacroContext, PermError, expand, expand_domain, is_spf_record, parse_record

# RFC 7208 7.4's examples: sender strong-bad@email.example.com, client 192.0.2.3 (or 2001:db8::cb01).
CONTEXT = MacroContext("strong-bad@email.example.com", "email.example.com", "192.0.2.3", "mx.example.org")


@pytest.mark.parametrize(("macro", "expanded"), [
    ("%{s}", "strong-bad@email.example.com"),
    ("%{o}", "email.example.com"),
    ("%{d}", "email.example.com"),
    ("%{d4}", "email.example.com"),
    ("%{d3}", "email.example.com"),
    ("%{d2}", "example.com"),
    ("%{d1}", "com"),
    ("%{dr}", "com.example.email"),
    ("%{d2r}", "example.email"),
    ("%{l}", "strong-bad"),
    ("%{l-}", "strong.bad"),
    ("%{lr}", "strong-bad"),
    ("%{lr-}", "bad.strong"),
    ("%{l1r-}", "strong"),
    ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
    ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
    ("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"),
    ("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", "3.2.0.192.in-addr.strong.lp._spf.example.com"),
    ("%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"),
    ("%%%_%-", "% %20"),
    ("%{S}", "strong-bad%40email.example.com"),  # upper case: URL-escaped
])
def test_rfc_7208_macro_examples(macro: str, expanded: str) -> None:
    assert expand(macro, CONTEXT) == expanded


def test_ipv6_client_expands_to_nibbles() -> None:
    context = MacroContext("a@b.example", "b.example", "2001:db8::cb01", "h.example")
    assert expand("%{ir}.%{v}._spf.%{d2}", context) == (
        "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.b.example")


def test_long_expansions_lose_labels_on_the_left() -> None:
    context = MacroContext("a@b.example", "x" * 60 + ".b.example", "192.0.2.3", "h")
    name = expand_domain("%{d}.%{d}.%{d}.%{d}.example", context)
    assert len(name) <= 253 and name.endswith(".example")


def test_a_record_parses_into_mechanisms_and_a_redirect() -> None:
    mechanisms, redirect = parse_record("v=spf1 +ip4:192.0.2.0/24 -ip6:2001:db8::/32 a:mail.%{d}/28//64 ~mx "
                                        "?ptr include:_spf.example.com exists:%{i}.x.example unknown=ok "
                                        "redirect=_spf.example.org")
    assert [(m.qualifier, m.name) for m in mechanisms] == [
        ("+", "ip4"), ("-", "ip6"), ("+", "a"), ("~", "mx"), ("?", "ptr"), ("+", "include"), ("+", "exists")]
    assert (mechanisms[0].argument, mechanisms[0].cidr4) == ("192.0.2.0", 24)
    assert (mechanisms[2].argument, mechanisms[2].cidr4, mechanisms[2].cidr6) == ("mail.%{d}", 28, 64)
    assert redirect is not None and redirect.argument == "_spf.example.org"


@pytest.mark.parametrize("record", [
    "v=spf1 ip4:192.0.2.300",        # not an address
    "v=spf1 ip4:192.0.2.0/33",       # CIDR out of range
    "v=spf1 a/33",
    "v=spf1 mx//129",
    "v=spf1 include",                # include needs a domain
    "v=spf1 include:localhost",      # not a domain-spec (one label)
    "v=spf1 all:foo",
    "v=spf1 frobnicate",             # an unknown mechanism
    "v=spf1 -redirect=x.example",    # a modifier with a qualifier
    "v=spf1 redirect=a.example redirect=b.example",
    "v=spf1 exists:%{c}.example",    # c only in exp=
    "v=spf1 exists:%{d0}.example",   # at least one part
    "v=spf1 a:foo%bar.example",      # a lone %
])
def test_syntax_errors_are_permerror(record: str) -> None:
    with pytest.raises(PermError):
        parse_record(record)


def test_the_version_must_be_v_spf1_then_a_space_or_the_end() -> None:
    assert is_spf_record(b"v=spf1 -all") and is_spf_record(b"v=spf1") and is_spf_record(b"V=SPF1 -all")
    assert not is_spf_record(b"v=spf10 -all") and not is_spf_record(b"spf2.0/pra -all")
