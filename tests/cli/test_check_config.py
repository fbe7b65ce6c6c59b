"""`mailgate check-config` refuses what start-up refuses: the installed console script, and twistd beside it."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from mailgate.net.tls import ensure_certificate
from tests.support.gateway import BIN, free_port

MAILGATE = BIN / "mailgate"


def config_text(listeners: str = "", extra: str = "") -> str:
    listeners = listeners or f'[[listen]]\nname = "mx"\nprotocol = "smtp"\nendpoint = "tcp:{free_port()}:interface=127.0.0.1"\n'
    return '[server]\nhostname = "mx.example.test"\n[domains]\nlocal = ["example.test"]\n' + listeners + extra


def tls_listener() -> str:
    return (f'[[listen]]\nname = "pop3s"\nprotocol = "pop3"\nendpoint = "tcp:{free_port()}:interface=127.0.0.1"\n'
            'tls = "implicit"\n')


def outside_systemd() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")}


def check_config(root: Path, text: str) -> subprocess.CompletedProcess[str]:
    (root / "mailgate.toml").write_text(text)
    return subprocess.run([str(MAILGATE), "--config", "mailgate.toml", "check-config"], cwd=root,
                          capture_output=True, text=True, timeout=60, env=outside_systemd(), check=False)


def start(root: Path) -> subprocess.CompletedProcess[str]:
    """twistd on the same file, until it exits by itself."""
    return subprocess.run([str(BIN / "twistd"), "-n", "--pidfile=", "--logfile", str(root / "twistd.log"),
                           "mailgate", "--config", "mailgate.toml"],
                          cwd=root, capture_output=True, text=True, timeout=60, env=outside_systemd(), check=False)


def assert_both_refuse(root: Path, text: str, line: str) -> None:
    """check-config prints the line start-up prints, and both exit 1 without a traceback."""
    checked = check_config(root, text)
    assert (checked.returncode, checked.stdout) == (1, ""), checked.stdout + checked.stderr
    assert checked.stderr.splitlines() == [line]
    started = start(root)
    assert started.returncode == 1, started.stdout + started.stderr
    assert line in started.stderr.splitlines()
    assert "Traceback" not in checked.stderr + started.stdout + started.stderr


def write_plugin(root: Path, name: str, source: str) -> None:
    (root / "plugins").mkdir(exist_ok=True)
    (root / "plugins" / f"{name}.py").write_text(textwrap.dedent(source))


def test_a_plugin_that_cannot_be_imported(tmp_path: Path) -> None:
    write_plugin(tmp_path, "mg_check_broken", "import no_such_module_for_mailgate\n")
    assert_both_refuse(tmp_path, config_text(extra='[plugins]\nenable = ["mg_check_broken"]\n'),
                       "plugins.enable[0]: cannot import 'mg_check_broken': No module named "
                       "'no_such_module_for_mailgate'")


def test_a_misspelt_hook_name(tmp_path: Path) -> None:
    write_plugin(tmp_path, "mg_check_misspelt", """\
        from mailgate import hookimpl

        @hookimpl
        def mailgate_rout(recipient, envelope):
            return "local"
    """)
    text = config_text(extra='[plugins]\nenable = ["mg_check_misspelt"]\n')
    checked = check_config(tmp_path, text)
    assert checked.returncode == 1 and "Traceback" not in checked.stderr
    [line] = checked.stderr.splitlines()
    assert line.startswith("plugins.enable: ") and "mailgate_rout" in line
    assert_both_refuse(tmp_path, text, line)


def test_a_key_that_does_not_match_its_certificate(tmp_path: Path) -> None:
    for name in ("one", "two"):
        ensure_certificate(str(tmp_path / f"{name}.crt"), str(tmp_path / f"{name}.key"), "mx.example.test")
    assert_both_refuse(tmp_path, config_text(tls_listener(), '[tls]\ncertificate = "one.crt"\nkey = "two.key"\n'),
                       "tls.key: two.key is not the private key of the certificate in one.crt")


def test_a_missing_certificate_directory(tmp_path: Path) -> None:
    text = config_text(tls_listener(), '[tls]\ncertificate = "/nonexistent/tls/cert.pem"\n'
                                       'key = "/nonexistent/tls/key.pem"\n')
    assert_both_refuse(tmp_path, text,
                       "tls.certificate: directory /nonexistent/tls does not exist (mailgate makes the directories "
                       f"of a generated certificate only below its run directory, {tmp_path})")
    assert not Path("/nonexistent").exists()


def test_one_file_of_the_pair_missing(tmp_path: Path) -> None:
    ensure_certificate(str(tmp_path / "c.pem"), str(tmp_path / "k.pem"), "mx.example.test")
    assert_both_refuse(tmp_path, config_text(tls_listener(), '[tls]\ncertificate = "c.pem"\nkey = "typo.pem"\n'),
                       "tls.key: typo.pem does not exist, but tls.certificate c.pem does: a self-signed pair is "
                       "made only when both are missing, and never over a file of yours")


def test_a_state_directory_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    assert_both_refuse(tmp_path, config_text(extra='[store]\nmaildir_root = "afile/mail"\n'),
                       f"store.maildir_root: cannot create afile/mail: {tmp_path}/afile is not a directory")


@pytest.mark.parametrize("endpoint", ["systemd:domain=INET:index=0", "systemd:domain=INET6:name=smtp"])
def test_systemd_endpoints_are_accepted_outside_systemd(tmp_path: Path, endpoint: str) -> None:
    listeners = f'[[listen]]\nname = "mx"\nprotocol = "smtp"\nendpoint = "{endpoint}"\n'
    checked = check_config(tmp_path, config_text(listeners))
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "config OK: mailgate.toml\n", "")
    started = start(tmp_path)  # outside systemd there is nothing to adopt: one line, not a traceback
    assert started.returncode == 1
    assert f"listen[0].endpoint: {endpoint}: no such socket was passed by systemd (LISTEN_FDS)" \
        in started.stderr.splitlines()
    assert "Traceback" not in started.stdout + started.stderr


@pytest.mark.parametrize("endpoint", ["systemd:domain=INET", "systemd:domain=NOPE:index=0",
                                      "systemd:domain=INET:index=x", "systemd:domain=INET:index=0:name=a"])
def test_malformed_systemd_endpoints_are_refused(tmp_path: Path, endpoint: str) -> None:
    listeners = f'[[listen]]\nname = "mx"\nprotocol = "smtp"\nendpoint = "{endpoint}"\n'
    checked = check_config(tmp_path, config_text(listeners))
    assert checked.returncode == 1
    [line] = checked.stderr.splitlines()
    assert line.startswith("listen[0].endpoint: not a server endpoint (") and "Traceback" not in line


def test_a_good_configuration_with_tls_passes_and_writes_nothing(tmp_path: Path) -> None:
    checked = check_config(tmp_path, config_text(tls_listener()))
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "config OK: mailgate.toml\n", "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mailgate.toml"]  # no var/, no generated pair


def test_a_pair_to_generate_below_the_run_directory_named_through_a_symbolic_link(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "link").symlink_to(run)
    text = config_text(tls_listener(), f'[tls]\ncertificate = "{tmp_path}/link/tls/cert.pem"\n'
                                       f'key = "{tmp_path}/link/tls/key.pem"\n')
    checked = check_config(run, text)
    assert (checked.returncode, checked.stderr) == (0, "")


def test_an_unusable_dkim_key_names_the_file(tmp_path: Path) -> None:
    keys = tmp_path / "var" / "dkim" / "example.test"
    keys.mkdir(parents=True)
    (keys / "s1.pem").write_text("-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n")
    assert_both_refuse(tmp_path, config_text(), "dkim.keys_dir: var/dkim/example.test/s1.pem: not an unencrypted "
                                                "PEM private key")
    (keys / "s1.pem").unlink()
    (keys / "s1.pem").symlink_to(tmp_path / "moved-away.pem")  # a key that is missing
    assert_both_refuse(tmp_path, config_text(), "dkim.keys_dir: var/dkim/example.test/s1.pem: cannot read: "
                                                "No such file or directory")
    checked = check_config(tmp_path, config_text(extra='[dkim]\nsign = "off"\n'))  # not signing: not read
    assert checked.returncode == 0, checked.stderr
