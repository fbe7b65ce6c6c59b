"""One log line per recipient per outcome, in Postfix's manner, made from the delivery events.

    4F1A2B3C: from=<alice@example.test>, to=<bob@remote.test>, relay=mx1.remote.test, delay=2.3, attempt=1, status=sent (250 2.0.0 Ok)
    4F1A2B3C: from=<alice@example.test>, to=<carol@example.test>, client=[192.0.2.7], listener=mx, route=local, size=1234, status=received

`status` is received, sent, deferred, bounced or expired; `relay` is the
host that answered, else the route (`local`, `webhook:tickets`); `delay` is
the seconds since the message arrived. The namespace is `mailgate.delivery`,
and in `log.format = "json"` each line is an object with `event`
"delivery" (or "received") and these fields. Refused commands are logged by
the SMTP session (mailgate.smtp.refusal_log), with the reply sent.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

log = Logger(namespace="mailgate.delivery")

STATUS = {"delivered": "sent", "deferred": "deferred", "bounced": "bounced", "expired": "expired"}
OUTCOME_FORMAT = ("{queue_id}: from=<{from}>, to=<{to}>, relay={relay}, delay={delay}, attempt={attempt}, "
                  "status={status} ({reply})")
RECEIVED_FORMAT = ("{queue_id}: from=<{from}>, to=<{to}>, client=[{client}], listener={listener}, route={route}, "
                   "size={size}, status=received")


def tell(event: dict[str, Any]) -> None:
    """The line for one mailgate_event; refused events are the session's to log."""
    kind = event.get("type")
    if kind == "received":
        log.info(RECEIVED_FORMAT, event="received", queue_id=event.get("queue_id", ""),
                 client=event.get("client", ""), listener=event.get("listener", ""), route=event.get("route", ""),
                 size=event.get("size", ""), status="received", **_addresses(event))
        return
    status = STATUS.get(str(kind))
    if status is None:
        return
    emit = log.warn if status in ("bounced", "expired") else log.info
    emit(OUTCOME_FORMAT, event="delivery", queue_id=event.get("queue_id", ""),
         relay=event.get("relay") or event.get("route", ""), delay=_seconds(event.get("delay")),
         attempt=event.get("attempt", 0), status=status, reply=event.get("reply", ""), route=event.get("route", ""),
         **_addresses(event))


def _addresses(event: dict[str, Any]) -> dict[str, Any]:
    return {"from": event.get("mail_from", ""), "to": event.get("recipient", "")}


def _seconds(value: object) -> float | str:
    """Postfix's delay=: seconds, a tenth of a second's precision below 100."""
    if not isinstance(value, (int, float)):
        return "?"
    return round(value, 1) if value < 100 else round(value)
