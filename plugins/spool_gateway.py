"""Example plugin: a gateway scheme `spool:DIR` that writes each message into DIR.

    [plugins]
    paths = ["plugins"]
    enable = ["spool_gateway"]

    [relay.transport]
    "archive.example.test" = "spool:var/archive"

Each message becomes DIR/ID.eml (as received, CRLF) beside DIR/ID.json (the
envelope). Each file is written under a hidden temporary name, fsynced, then
renamed, so a reader sees whole files only, the .json first.
"""

import json
import os
import uuid

from mailgate import TemporaryFailure, hookimpl


@hookimpl
def mailgate_deliver(route, envelope, message):
    scheme, _, directory = route.partition(":")
    if scheme != "spool" or not directory:
        return None  # not ours: another plugin may own the scheme
    name = uuid.uuid4().hex
    sidecar = {"mail_from": envelope.mail_from, "rcpt_to": envelope.rcpt_to, "route": route}
    try:
        os.makedirs(directory, exist_ok=True)
        _write(directory, name + ".json", json.dumps(sidecar).encode())
        _write(directory, name + ".eml", message)
    except OSError as exc:  # full disk, permissions: the queue retries, then bounces
        raise TemporaryFailure("Spool write failed", reason=f"{route}: {exc}") from exc
    return True


def _write(directory, name, data):
    temporary = os.path.join(directory, f".{name}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.rename(temporary, os.path.join(directory, name))
