"""Delivery of one accepted message: local recipients into Maildirs, the rest into the queue."""

from __future__ import annotations

import errno
from dataclasses import replace
from typing import Any

from twisted.logger import Logger

from mailgate.core.envelope import Envelope
from mailgate.core.errors import TemporaryFailure
from mailgate.store.maildir_writer import MaildirStore, StoredMessage
from mailgate.hooks.manager import first_answer
from mailgate.builtin.lists import bounce_address, list_id
from mailgate.inbound.routing import Refusal, expand_list, resolve, route_recipient
from mailgate.core.trace import trace_header

log = Logger()


class Deliverer:
    """Makes an accepted message durable before the client hears 250.

    The queue entry is written first and released only once the local
    copies are stored too: if the Maildir write fails, the entry is removed
    again and the client hears 451, so its retry makes no duplicate.
    """

    def __init__(self, store: MaildirStore, queue: Any, hooks: Any, hostname: str = "localhost") -> None:
        self._store = store
        self._hostname = hostname
        self._queue = queue  # mailgate.outbound.scheduler.OutboundQueue
        self._hooks = hooks

    async def deliver(
        self, envelope: Envelope, message: StoredMessage, queue_id: str, *,
        expand_lists: bool = True, inline: bool = True,
    ) -> None:
        """Deliver or queue everything, or raise DeliveryError having kept nothing.

        List copies are made first: each is a message of its own (its own
        envelope sender and List-Id), stored before the original's copies.
        """
        local, queued, lists = split_routes(envelope.routes)
        for index, list_address in enumerate(lists if expand_lists else ()):
            await self._deliver_list_copy(list_address, envelope, message, f"{queue_id}L{index}")
        if queued and inline:
            queued = await self._deliver_inline(envelope, message, queued)
        try:
            if queued:
                await self._queue.add(queue_id, envelope, queued, message)
        except OSError as exc:
            raise storage_failure(exc, "queue") from exc
        try:
            if local:
                await self._store.deliver(local, message)
        except OSError as exc:
            if queued:
                await self._queue.cancel(queue_id)
            raise storage_failure(exc, "maildir") from exc
        if queued:
            self._queue.release(queue_id)

    async def _deliver_inline(
        self, envelope: Envelope, message: StoredMessage, queued: list[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        """Offer each queued route to `mailgate_deliver_inline`; return those left to queue.

        A DeliveryError raised here propagates before anything is stored, so
        the client's reply is that error and nothing is kept.
        """
        by_route: dict[str, list[str]] = {}
        for recipient, route in queued:
            by_route.setdefault(route, []).append(recipient)
        wire: bytes | None = None
        remaining: list[tuple[str, str]] = []
        for route, recipients in by_route.items():
            if wire is None:
                wire = message.wire_form()
            scoped = replace(envelope, rcpt_to=recipients)
            answer = await first_answer(
                self._hooks.mailgate_deliver_inline, route=route, envelope=scoped, message=wire
            )
            if answer is None:
                remaining.extend((recipient, route) for recipient in recipients)
        return remaining

    async def _deliver_list_copy(
        self, list_address: str, envelope: Envelope, message: StoredMessage, queue_id: str
    ) -> None:
        """One copy for the list's members, from the list's bounce address, so
        members' bounces reach the list and not the poster (RFC 2919 List-Id)."""
        sender = bounce_address(list_address)
        copy_envelope = Envelope(mail_from=sender, may_relay=True, helo=envelope.helo, client_ip=envelope.client_ip)
        for member in await expand_list(self._hooks, list_address):
            resolved = await resolve(self._hooks, member, copy_envelope)
            if isinstance(resolved, Refusal):
                log.warn("{id}: list {list}: member {member} refused: {code} {text}", id=queue_id,
                         list=list_address, member=member, code=resolved.code, text=resolved.text)
                continue
            copy_envelope.rcpt_to.append(member)
            copy_envelope.routes.update(resolved)
        if not copy_envelope.routes:
            return
        header = trace_header(
            mail_from=sender, hostname=self._hostname, queue_id=queue_id, protocol="list",
            recipients=copy_envelope.rcpt_to,
        ) + f"List-Id: {list_id(list_address)}\n".encode() + message.transit_header
        await self.deliver(copy_envelope, message.with_header(header), queue_id, expand_lists=False)

    async def inject(self, envelope: Envelope, message: StoredMessage, queue_id: str) -> None:
        """Deliver a message mailgate wrote itself (a bounce): routed like any other."""
        for recipient in envelope.rcpt_to:
            route = await route_recipient(self._hooks, recipient, envelope)
            if isinstance(route, Refusal):
                log.warn("{id}: cannot deliver to {rcpt}: {code} {text}",
                         id=queue_id, rcpt=recipient, code=route.code, text=route.text)
                continue
            envelope.routes[recipient] = route
        if envelope.routes:  # queued, never inline: nobody waits on a bounce's reply
            await self.deliver(envelope, message, queue_id, inline=False)


def storage_failure(exc: OSError, where: str) -> TemporaryFailure:
    """A full disk or quota is 452 4.3.1 (RFC 3463: mail system full); the
    client keeps the message and retries, and mail already accepted is kept."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return TemporaryFailure("Insufficient system storage", code=452, enhanced="4.3.1", reason=f"{where}: {exc}")
    return TemporaryFailure("Local delivery failed, try again later", reason=f"{where}: {exc}")


def split_routes(routes: dict[str, str]) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    """Local mailbox addresses, (recipient, route) pairs for the queue, and list
    addresses to expand; discarded recipients vanish."""
    local: list[str] = []
    queued: list[tuple[str, str]] = []
    lists: list[str] = []
    for recipient, route in routes.items():
        scheme, _, argument = route.partition(":")
        if scheme == "local":
            local.append(argument or recipient)
        elif scheme == "list":
            lists.append(argument or recipient)
        elif scheme != "discard":
            queued.append((recipient, route))
    return local, queued, lists
