"""`mailgate dkim keygen|dns`: DKIM signing keys under `dkim.keys_dir`, and the DNS records to publish for them.

`keygen DOMAIN` writes `<keys_dir>/DOMAIN/SELECTOR.pem` (mode 0600, never
over an existing file; as root, owned like the directory it is made in)
and prints the record: `SELECTOR._domainkey.DOMAIN. IN TXT "v=DKIM1; k=rsa;
p=..."`, one line. `dns DOMAIN` prints the record of every key there. A
running server signs with a new key from its next message on.
"""

from __future__ import annotations

import argparse
import os
import sys

from mailgate.cli.queue import CommandError
from mailgate.config import load_config
from mailgate.mailauth.keys import (
    ALGORITHMS,
    DEFAULT_SELECTOR,
    KeyProblem,
    domain_keys,
    is_selector,
    key_domain,
    write_new_key,
)


def add_dkim_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    dkim = commands.add_parser("dkim", help="DKIM signing keys and their DNS records", parents=[common])
    actions = dkim.add_subparsers(dest="action", required=True, metavar="ACTION")
    keygen = actions.add_parser("keygen", help="make a signing key for a domain and print its DNS record",
                                parents=[common])
    keygen.add_argument("domain", metavar="DOMAIN")
    keygen.add_argument("--selector", default=DEFAULT_SELECTOR, help=f"the key's selector (default {DEFAULT_SELECTOR})")
    keygen.add_argument("--algorithm", choices=ALGORITHMS, default="rsa",
                        help="rsa (2048 bits, the default) or ed25519 (RFC 8463)")
    keygen.set_defaults(handler=_keygen)
    dns = actions.add_parser("dns", help="print the DNS records of a domain's keys", parents=[common])
    dns.add_argument("domain", metavar="DOMAIN")
    dns.set_defaults(handler=_dns)


def _domain(text: str) -> str:
    domain = key_domain(text)
    if domain is None:
        raise CommandError(f"not a domain name: {text!r}")
    return domain


def _keygen(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    domain, selector = _domain(args.domain), args.selector.lower()
    if not is_selector(selector):
        raise CommandError(f"not a selector (DNS labels: letters, digits, '-', '.'): {args.selector!r}")
    try:
        key = write_new_key(config.dkim.keys_dir, domain, selector, args.algorithm)
    except FileExistsError:
        path = os.path.join(config.dkim.keys_dir, domain, f"{selector}.pem")
        raise CommandError(f"{path} exists: not replaced (choose another --selector to rotate keys)") from None
    print(key.dns_record())
    print(f"mailgate: wrote {key.path}", file=sys.stderr)
    return 0


def _dns(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    domain = _domain(args.domain)
    try:
        keys = domain_keys(config.dkim.keys_dir, domain)
    except KeyProblem as problem:
        raise CommandError(str(problem)) from None
    if not keys:
        raise CommandError(f"no DKIM keys for {domain} in {os.path.join(config.dkim.keys_dir, domain)} "
                           "(make one with `mailgate dkim keygen`)")
    for key in keys:
        print(key.dns_record())
    return 0
