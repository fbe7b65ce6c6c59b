"""Routes: where mail for one recipient goes, parsed once from its string form.

Route strings are shared by `relay.transport` and `mailgate_route` (SPEC):
`local` or `local:ADDRESS`, `mx`, `smtp:HOST:PORT`, `webhook:NAME`,
`pipe:NAME`, `list:ADDRESS` (list expansion), `reject:CODE TEXT`,
`discard`, and `SCHEME:ARGS` for schemes plugins deliver. The string is
parsed here and nowhere else; everything downstream reads the fields.
"""

from __future__ import annotations

import re
from mailgate.core.addresses import AddressError, normalize_mailbox
from mailgate.core.reply import Reply, ReplyError

FORMS = "local, local:ADDRESS, mx, smtp:HOST:PORT, webhook:NAME, reject:CODE TEXT, discard or SCHEME:ARGS"
BARE_SCHEMES = frozenset({"local", "mx", "discard"})  # complete without an argument
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[\w.-]+):(\d{1,5})")


class RouteError(ValueError):
    """A string that is not a route; the message says why, for a log or config line."""


class Route(str):
    """A parsed route: `scheme` and the `argument` after the first colon ("" if none).

    A Route is the route string itself (a `str` subclass), so hooks and the
    spool keep getting the strings the contract promises, while mailgate
    reads the fields parsed once here. Constructing one checks it.
    """

    scheme: str
    argument: str

    def __new__(cls, text: str) -> Route:
        if isinstance(text, Route):
            return text
        if not isinstance(text, str):
            raise RouteError(f"not a route ({FORMS}): {text!r}")
        scheme, colon, argument = text.partition(":")
        bare = scheme in BARE_SCHEMES and not colon
        if not bare and (not colon or not _SCHEME.fullmatch(scheme) or scheme in ("mx", "discard")):
            raise RouteError(f"not a route ({FORMS}): {text!r}")
        route = super().__new__(cls, text)
        route.scheme, route.argument = scheme, argument
        route._check()
        return route

    @classmethod
    def parse(cls, text: str) -> Route:
        """Parse and check a route string; RouteError names what is wrong."""
        return cls(text)

    def _check(self) -> None:
        if self.scheme in ("local", "list") and (self.argument or self != self.scheme):
            try:
                normalize_mailbox(self.argument)
            except AddressError as error:
                raise RouteError(f"{self.scheme}:ADDRESS needs an address ({error}): {self}") from None
        elif self.scheme == "smtp":
            self.host_port()
        elif self.scheme == "reject":
            self.refusal()

    def host_port(self) -> tuple[str, int]:
        """(host, port) of an `smtp:HOST:PORT` route; brackets around an IPv6 host removed."""
        match = _HOST_PORT.fullmatch(self.argument)
        if match is None or not 0 < int(match.group(2)) < 65536:
            raise RouteError(f"expected smtp:HOST:PORT, got {self}")
        return match.group(1).strip("[]"), int(match.group(2))

    def refusal(self) -> Reply:
        """The reply of a `reject:CODE TEXT` route; a 4xx or 5xx code is required."""
        try:
            reply = Reply.parse(self.argument)
        except ReplyError:
            reply = None
        if reply is None or reply.positive:
            raise RouteError(f'expected "reject:CODE TEXT" with a 4xx or 5xx code, got {self}')
        if not reply.enhanced:  # RFC 3463: every refusal carries one
            reply = Reply(reply.code, f"{str(reply.code)[0]}.7.1", reply.text or "Rejected")
        return reply

    def mailbox(self, recipient: str) -> str:
        """The address a `local` or `list` route delivers to: its own, else the recipient's."""
        return self.argument or recipient


LOCAL = Route("local")
MX = Route("mx")
DISCARD = Route("discard")


def host_port(text: str) -> tuple[str, int]:
    """"host:port" or "[v6]:port" -> (host, port); RouteError if malformed."""
    return Route("smtp:" + text).host_port()
