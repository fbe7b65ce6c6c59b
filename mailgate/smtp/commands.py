"""The SMTP verbs and the handler each is answered by (mailgate.smtp.channel.Handler)."""

from __future__ import annotations

from mailgate.smtp import (
    auth_command, bdat_command, data_command, mail_command, rcpt_command, session_commands, verify_commands,
)
from mailgate.smtp.channel import Handler

COMMANDS: dict[str, Handler] = {
    "HELO": session_commands.helo,
    "EHLO": session_commands.ehlo,
    "STARTTLS": session_commands.starttls,
    "RSET": session_commands.rset,
    "NOOP": session_commands.noop,
    "QUIT": session_commands.quit_,
    "HELP": session_commands.help_,
    "PROXY": session_commands.proxy,
    "MAIL": mail_command.mail,
    "RCPT": rcpt_command.rcpt,
    "DATA": data_command.data,
    "BDAT": bdat_command.bdat,
    "AUTH": auth_command.auth,
    "VRFY": verify_commands.vrfy,
    "EXPN": verify_commands.expn,
}
