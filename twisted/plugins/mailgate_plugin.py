"""The `twistd mailgate` drop-in: a ServiceMaker and nothing else."""

from twisted.application.service import ServiceMaker

mailgate = ServiceMaker(
    "mailgate", "mailgate.app.tap", "Pluggable mail gateway: SMTP, POP3, Maildir, relay", "mailgate"
)
