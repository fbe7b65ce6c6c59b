"""Example plugin: accept and silently discard mail for configured domains.

Enable it in mailgate.toml:

    [plugins]
    paths = ["plugins"]
    enable = ["blackhole"]

    [plugin.blackhole]
    domains = ["devnull.example.test"]
"""

from mailgate import hookimpl

_domains: frozenset[str] = frozenset()


@hookimpl
def mailgate_configure(config):
    global _domains
    settings = config.plugin.get("blackhole", {})
    _domains = frozenset(d.lower() for d in settings.get("domains", []))


@hookimpl
def mailgate_route(recipient, envelope):
    if recipient.rpartition("@")[2] in _domains:
        return "discard"
    return None
