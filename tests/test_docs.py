"""The configuration reference and etc/mailgate.toml name every key the code accepts, and no other."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Iterator

from mailgate.config.schema import known_keys

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "configuration.md"
DEFAULT_FILE = ROOT / "etc" / "mailgate.toml"
PLACEHOLDERS = {"NAME", "ADDRESS", "DOMAIN"}  # a name the operator chooses

# A dotted key as the reference writes it: `limits.max_message_size`,
# `listen[].endpoint`, `pipe.NAME.command`, `relay.transport.DOMAIN`.
_DOTTED = re.compile(r"`([a-z][a-z_]*(?:\[\])?(?:\.(?:[a-z_]+|NAME|ADDRESS|DOMAIN)(?:\[\])?)+)`")
# TOML lines, live or commented out: `[table]`, `[[array]]`, `key = value`.
_HEADER = re.compile(r"#?\s*(\[\[?[^\[\]#]+\]\]?)\s*(?:#.*)?")
_BARE_OR_QUOTED = r'(?:[A-Za-z0-9_-]+|"[^"]*")'
_ASSIGNMENT = re.compile(rf"#?\s*({_BARE_OR_QUOTED}(?:\s*\.\s*{_BARE_OR_QUOTED})*)\s*=")


def documented_keys(markdown: str) -> set[str]:
    """Dotted keys in headings, and in the first cell of table rows."""
    found: set[str] = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            found.update(_DOTTED.findall(line))
        elif line.startswith("|"):
            found.update(_DOTTED.findall(line.split("|")[1]))
    return found


def _segments(document: dict[str, Any]) -> tuple[str, ...]:
    """The one path a single-key TOML document holds; arrays of tables as "name[]"."""
    path: list[str] = []
    value: Any = document
    while isinstance(value, (dict, list)) and value:
        if isinstance(value, list):
            path[-1] += "[]"
            value = value[-1]
            continue
        [(key, value)] = value.items()
        path.append(key)
    return tuple(path)


def file_paths(toml_text: str) -> Iterator[tuple[str, ...]]:
    """Every table and key in the file, whether set or shown in a `# key = ...` comment."""
    table: tuple[str, ...] = ()
    for line in toml_text.splitlines():
        line = line.strip()
        header = _HEADER.fullmatch(line)
        if header:
            table = _segments(tomllib.loads(header[1]))
            yield table
            continue
        assignment = _ASSIGNMENT.match(line)
        if assignment:
            yield table + _segments(tomllib.loads(f"{assignment[1]} = 0"))


def _matches(key: str, path: tuple[str, ...]) -> bool:
    parts = key.split(".")
    return len(parts) == len(path) and all(
        part == segment or (part in PLACEHOLDERS and not segment.endswith("[]"))
        for part, segment in zip(parts, path)
    )


def test_keys_are_listed() -> None:
    keys = known_keys()
    assert {"limits.max_message_size", "listen[].endpoint", "pipe.NAME.command",
            "lists.ADDRESS.members", "relay.transport.DOMAIN", "plugin.NAME"} <= set(keys)
    assert len(keys) == len(set(keys))


def test_every_accepted_key_is_in_the_reference() -> None:
    missing = [key for key in known_keys() if key not in documented_keys(REFERENCE.read_text())]
    assert not missing, f"keys the code accepts but docs/configuration.md does not document: {missing}"


def test_the_reference_documents_no_key_the_code_refuses() -> None:
    unknown = sorted(documented_keys(REFERENCE.read_text()) - set(known_keys()))
    assert not unknown, f"keys docs/configuration.md documents but the code does not accept: {unknown}"


def test_every_accepted_key_is_in_the_default_file() -> None:
    paths = list(file_paths(DEFAULT_FILE.read_text()))
    missing = [key for key in known_keys() if not any(_matches(key, path) for path in paths)]
    assert not missing, f"keys the code accepts but etc/mailgate.toml neither sets nor shows as '# key =': {missing}"


def test_the_default_file_shows_no_key_the_code_refuses() -> None:
    keys = known_keys()
    tables = {".".join(key.split(".")[:i]) for key in keys for i in range(1, key.count(".") + 1)}
    unknown = [
        ".".join(path) for path in file_paths(DEFAULT_FILE.read_text())
        if not any(_matches(key, path) for key in keys)
        and not any(_matches(table, path) for table in tables)
        and not path[:1] == ("plugin",)  # [plugin.NAME] tables are the plugin's own
    ]
    assert not unknown, f"keys etc/mailgate.toml shows but the code does not accept: {unknown}"


def test_the_checks_find_what_they_look_for() -> None:
    """The parsers above, on the forms the two files use."""
    assert documented_keys("### `limits.max_message_size`\n| `listen[].endpoint` | `relay.tls` |\n") == {
        "limits.max_message_size", "listen[].endpoint"}
    toml = '[relay]\n# tls = "none"\n# [relay.transport]\n# "a.test" = "mx"\n[[listen]]\nname = "mx"\n'
    assert list(file_paths(toml)) == [
        ("relay",), ("relay", "tls"), ("relay", "transport"), ("relay", "transport", "a.test"),
        ("listen[]",), ("listen[]", "name"),
    ]
    assert _matches("relay.transport.DOMAIN", ("relay", "transport", "a.test"))
    assert _matches("listen[].name", ("listen[]", "name"))
    assert not _matches("lists.ADDRESS.post", ("lists", "post"))


README = ROOT / "README.md"


def test_readme_says_how_clients_trust_the_generated_certificate() -> None:
    """Where the file is, the names it holds, and each common client's setting (issue #12)."""
    text = README.read_text()
    section = text[text.index("## Trusting the self-signed certificate"):]
    section = section[:section.index("\n## ", 1)]
    for needed in ("var/tls/cert.pem", "`server.hostname`, `localhost` and `127.0.0.1`", "sslcertfile",
                   "sslcertck", "tls_trust_file", "tls_fingerprint", "Thunderbird", "security exception",
                   "-fingerprint -sha256"):
        assert needed in section, needed


def test_readme_runs_the_cli_as_the_service_user_or_with_rundir() -> None:
    text = README.read_text()
    section = text[text.index("## Running it for real"):text.index("## Trusting the self-signed certificate")]
    assert "as the service user" in section and "--rundir /var/lib/mailgate" in section
