"""Independent DKIM verifiers for tests: Perl's Mail::DKIM and rspamd, both asking a FakeDNSServer for keys.

Neither is dkimpy (which mailgate itself uses), so a signature they accept
is one any receiver accepts. Mail::DKIM (Debian libmail-dkim-perl 1.2023)
verifies RSA only; rspamd verifies RSA and Ed25519 (RFC 8463). Both run
in a thread: the fake DNS server answers from the test's reactor, which
must keep running meanwhile.

    results = await mail_dkim(message, self.dns)          # [("pass", "example.test", "s1", "rsa-sha256")]
    trace = await rspamd_dkim(rspamd, message)             # ["example.test:+"], rspamd's DKIM_TRACE
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

from twisted.internet.threads import deferToThread

from tests.support.fake_dns import FakeDNSServer
from tests.support.rspamd import RspamdServer

SCRIPT = Path(__file__).with_name("mail_dkim_verify.pl")
PERL = shutil.which("perl")
NO_MAIL_DKIM = "Perl's Mail::DKIM is not installed (Debian package libmail-dkim-perl; .ci/run installs it)"


def have_mail_dkim() -> bool:
    if PERL is None:
        return False
    return subprocess.run([PERL, "-MMail::DKIM::Verifier", "-MNet::DNS", "-e", "1"], capture_output=True,
                          check=False).returncode == 0


async def mail_dkim(message: bytes, dns: FakeDNSServer) -> list[tuple[str, ...]]:
    """Mail::DKIM's verdict on each signature: (result, domain, selector, algorithm), then ("overall", result)."""
    assert PERL is not None
    done = await deferToThread(subprocess.run, [PERL, str(SCRIPT), "127.0.0.1", str(dns.port)], input=message,
                               capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return [tuple(line.split()) for line in done.stdout.decode().splitlines()]


def _check(url: str, message: bytes) -> dict:
    headers = {"IP": "192.0.2.1", "Helo": "client.test", "From": "sender@client.test"}  # not a local network
    request = urllib.request.Request(url + "/checkv2", data=message, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


async def rspamd_dkim(rspamd: RspamdServer, message: bytes) -> list[str]:
    """rspamd's DKIM_TRACE options: "domain:+" for a signature that verified, "domain:-" for one that did not."""
    document = await deferToThread(_check, rspamd.url, message)
    return list(document.get("symbols", {}).get("DKIM_TRACE", {}).get("options", []))
