"""The `mailgate` command-line tool (console script `mailgate.cli.main:main`)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable, Sequence

from mailgate import __version__
from mailgate.accounts import users_file as users
from mailgate.app import preflight
from mailgate.cli.dkim import add_dkim_commands
from mailgate.cli.queue import CommandError, add_queue_commands
from mailgate.cli.reload import add_reload_command
from mailgate.config import ConfigError, GatewayConfig, load_config

DEFAULT_CONFIG = "etc/mailgate.toml"

Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; 0 on success, 1 on an expected error (one line each on stderr)."""
    args = build_parser().parse_args(argv)
    try:
        _enter_rundir(args)
        return args.handler(args)
    except (users.UserError, CommandError) as e:
        return _fail(str(e))
    except ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        return 1
    except OSError as e:  # unreadable config, users file in a read-only directory, ...
        where = f": {e.filename}" if e.filename else ""
        return _fail(f"{e.strerror or e}{where}")
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


def _enter_rundir(args: argparse.Namespace) -> None:
    """Change to --rundir as twistd does: after taking the --config path where we started."""
    args.config_file = args.config  # as given, for messages
    args.config = os.path.abspath(args.config)
    args.launched_in = os.getcwd()  # plugins.paths are relative to it, as twistd reads them before --rundir
    if args.rundir is None:
        return
    try:
        os.chdir(args.rundir)
    except OSError as error:
        raise CommandError(f"--rundir {args.rundir}: {error.strerror}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailgate", description="Manage a mailgate gateway.")
    parser.add_argument("--version", action="version", version=f"mailgate {__version__}")
    parser.add_argument("--config", default=DEFAULT_CONFIG, metavar="FILE",
                        help=f"configuration file (default: {DEFAULT_CONFIG}), relative to where you are")
    parser.add_argument("--rundir", default=None, metavar="DIR",
                        help="the server's run directory (twistd --rundir): relative paths in the "
                             "configuration are relative to it (default: the current directory)")
    # `--config` and `--rundir` are also accepted after the command (`mailgate check-config --config
    # FILE`); SUPPRESS keeps a subcommand from overwriting the top-level value when it is absent.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE", help="configuration file")
    common.add_argument("--rundir", default=argparse.SUPPRESS, metavar="DIR", help="the server's run directory")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_user_commands(commands, common)
    _add_check_config_command(commands, common)
    add_queue_commands(commands, common)
    add_dkim_commands(commands, common)
    add_reload_command(commands, common)
    return parser


def _add_user_commands(commands: argparse._SubParsersAction,
                       common: argparse.ArgumentParser) -> None:
    user = commands.add_parser("user", help="manage accounts in the users file", parents=[common])
    actions = user.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, handler, help_text in (
        ("add", _user_add, "add an account"),
        ("passwd", _user_passwd, "change an account's password"),
    ):
        action = actions.add_parser(name, help=help_text, parents=[common])
        action.add_argument("address", metavar="ADDRESS")
        action.add_argument("--password-stdin", action="store_true",
                            help="read the password as one line from standard input")
        action.set_defaults(handler=handler)
    delete = actions.add_parser("del", help="delete an account", parents=[common])
    delete.add_argument("address", metavar="ADDRESS")
    delete.set_defaults(handler=_user_del)
    listing = actions.add_parser("list", help="list accounts", parents=[common])
    listing.set_defaults(handler=_user_list)


def _add_check_config_command(commands: argparse._SubParsersAction,
                              common: argparse.ArgumentParser) -> None:
    check = commands.add_parser("check-config", help="validate the configuration file",
                                parents=[common])
    check.set_defaults(handler=_check_config)


def _check_config(args: argparse.Namespace) -> int:
    """Start-up's own checks (mailgate.app.preflight), short of binding or writing anything."""
    config = load_config(args.config)  # ConfigError: main() prints its problem lines
    problems = preflight.check(config, plugins_relative_to=args.launched_in)
    if problems:
        raise ConfigError(problems)
    print(f"config OK: {args.config_file}")
    return 0


def _user_add(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    address = users.normalize_address(args.address)
    users.add_user(config.users.file, address, _read_password(args.password_stdin))
    _warn_if_not_local(config, address)
    return 0


def _user_passwd(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    address = users.normalize_address(args.address)
    if not users.Accounts(config.users.file).exists(address):  # before prompting in vain
        raise users.UserError(f"no such user {address}")
    users.set_password(config.users.file, address, _read_password(args.password_stdin))
    return 0


def _user_del(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    users.delete_user(config.users.file, args.address)
    return 0


def _user_list(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    addresses = users.Accounts(config.users.file).addresses()
    for address in addresses:
        print(address)
    if not addresses:  # on stderr: stdout stays one address per line, for scripts
        missing = "" if os.path.exists(config.users.file) else " (no such file)"
        print(f"mailgate: no accounts in {os.path.abspath(config.users.file)}{missing}", file=sys.stderr)
    return 0


def _warn_if_not_local(config: GatewayConfig, address: str) -> None:
    domain = address.rpartition("@")[2]
    if domain not in config.domains.local:
        print(f"mailgate: warning: {domain} is not in domains.local", file=sys.stderr)


def _read_password(from_stdin: bool) -> str:
    password = _password_from_stdin() if from_stdin else _password_from_prompt()
    if not password:
        raise users.UserError("empty password refused")
    return password


def _password_from_stdin() -> str:
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:  # a replaced sys.stdin (tests) is already text
        line = sys.stdin.readline()
    else:
        try:
            line = stream.readline().decode("utf-8")
        except UnicodeDecodeError:
            raise users.UserError("password on standard input is not UTF-8") from None
    return line.removesuffix("\n").removesuffix("\r")


def _password_from_prompt() -> str:
    try:
        first = getpass.getpass("Password: ")
        second = getpass.getpass("Password (again): ")
    except EOFError:
        raise users.UserError("no password given") from None
    if first != second:
        raise users.UserError("passwords do not match")
    return first


def _fail(message: str) -> int:
    print(f"mailgate: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
