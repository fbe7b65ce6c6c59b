"""Example plugin: route a message's recipients by a header field; the first matching rule wins.

    [plugins]
    paths = ["plugins"]
    enable = ["header_router"]

    [plugin.header_router]
    rules = [
      {header = "X-Ticket-Queue", match = '^support$', route = "webhook:tickets"},
      {header = "Subject", match = '\\[invoice\\]', route = "smtp:127.0.0.1:2626"},
    ]

At the end of DATA (mailgate_message) the first rule whose header field's
value matches (a regular expression, case-insensitive, searched in the
unfolded value) gives every recipient of the message that route, through
`MessageChange(routes=...)`. The recipients were accepted at RCPT TO as
usual, so mail for domains nobody routes is still refused there; a rule
cannot refuse (DATA has one reply for all recipients), use address_router
or a reject route at RCPT for that.
"""

import re

from mailgate import MessageChange, hookimpl
from mailgate.config import ConfigError

_rules: list[tuple[bytes, re.Pattern[str], str]] = []
_FOLD = re.compile(r"\r\n[ \t]+")


@hookimpl
def mailgate_configure(config):
    global _rules
    rules, problems = [], []
    for i, rule in enumerate(config.plugin.get("header_router", {}).get("rules", [])):
        try:
            name = str(rule["header"]).lower().encode("ascii")
            rules.append((name, re.compile(rule["match"], re.IGNORECASE), str(rule["route"])))
        except (KeyError, TypeError, UnicodeError, re.error) as exc:  # a bad rule stops start-up, named
            problems.append(f"plugin.header_router.rules[{i}]: bad rule ({exc!r})")
    if problems:
        raise ConfigError(problems)
    _rules = rules


@hookimpl
def mailgate_message(envelope, message):
    if not _rules:
        return None
    fields = _header_fields(message)
    for name, pattern, route in _rules:
        if any(pattern.search(value) for value in fields.get(name, ())):
            return MessageChange(routes={recipient: route for recipient in envelope.routes})
    return None  # no rule matched: the routes chosen at RCPT TO stand


def _header_fields(message):
    """Lower-cased field name -> its unfolded values, from the header section only."""
    head = message.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    fields = {}
    for line in _FOLD.sub(" ", head).split("\r\n"):
        name, colon, value = line.partition(":")
        if colon:
            fields.setdefault(name.strip().lower().encode("ascii", "replace"), []).append(value.strip())
    return fields
