"""The DSN parameters (RFC 3461) of MAIL and RCPT, checked where security.dsn offers them.

MAIL takes RET and ENVID, RCPT takes NOTIFY and ORCPT; each is checked
(xtext, keywords, lengths) and kept in the form a next hop is given.
Where DSN is not offered they are unknown parameters, as before 0.2.
"""

from __future__ import annotations

from mailgate.core.dsn import DSNError, check_envid, check_notify, check_orcpt, check_ret
from mailgate.core.reply import Reply
from mailgate.smtp.policy import ListenerPolicy

MAIL_CHECKS = {"RET": check_ret, "ENVID": check_envid}
RCPT_CHECKS = {"NOTIFY": check_notify, "ORCPT": check_orcpt}


def dsn_offered(policy: ListenerPolicy) -> bool:
    """security.dsn: "all" listeners, or only "submission" ones (those that require AUTH)."""
    return policy.config.security.dsn == "all" or policy.listener.auth == "required"


def unsupported(name: str) -> Reply:
    return Reply(555, "5.5.4", f"Unsupported parameter {name}")


def check_mail_parameter(params: dict[str, str | None], name: str, policy: ListenerPolicy) -> Reply | None:
    """Check RET or ENVID in place (RET upper-cased); the refusal, if any."""
    if not dsn_offered(policy):
        return unsupported(name)
    try:
        params[name] = MAIL_CHECKS[name](params[name])
    except DSNError as error:
        return Reply(501, "5.5.4", str(error))
    return None


def rcpt_parameters(params: dict[str, str | None], policy: ListenerPolicy) -> dict[str, str] | Reply:
    """RCPT TO's parameters, checked: NOTIFY and ORCPT where DSN is offered, nothing else."""
    checked: dict[str, str] = {}
    for name, value in params.items():
        check = RCPT_CHECKS.get(name)
        if check is None or not dsn_offered(policy):
            return unsupported(name)
        try:
            checked[name] = check(value)
        except DSNError as error:
            return Reply(501, "5.5.4", str(error))
    return checked
