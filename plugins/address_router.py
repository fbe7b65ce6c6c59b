"""Example plugin: route recipients by regular expression; the first matching rule wins.

    [plugins]
    paths = ["plugins"]
    enable = ["address_router"]

    [plugin.address_router]
    rules = [
      {match = '^support\\+.*@example\\.test$', route = "smtp:127.0.0.1:2626"},
      {match = '@spam\\.test$', route = "reject:550 5.7.1 no"},
    ]

Rules match the recipient address (lower-cased): routes are chosen at RCPT
TO, before the client has sent the message. To route by what the message
says, see header_router.py.
"""

import re

from mailgate import hookimpl
from mailgate.config import ConfigError

_rules: list[tuple[re.Pattern[str], str]] = []


@hookimpl
def mailgate_configure(config):
    global _rules
    rules, problems = [], []
    for i, rule in enumerate(config.plugin.get("address_router", {}).get("rules", [])):
        try:
            rules.append((re.compile(rule["match"], re.IGNORECASE), str(rule["route"])))
        except (KeyError, TypeError, re.error) as exc:  # a bad rule stops start-up, named
            problems.append(f"plugin.address_router.rules[{i}]: bad rule ({exc!r})")
    if problems:
        raise ConfigError(problems)
    _rules = rules


@hookimpl
def mailgate_route(recipient, envelope):
    for pattern, route in _rules:
        if pattern.search(recipient):
            return route
    return None  # not ours: later plugins and the built-ins decide
