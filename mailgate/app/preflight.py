"""Start-up's checks before anything is bound: plugins, the TLS pair, the directories.

`twistd mailgate` builds the plugin manager in makeService, checks and
prepares the files in privilegedStartService (in --rundir, before
--uid/--gid apply), and checks what the dropped user can write in
startService. `mailgate check-config` calls the same functions, short of
writing anything, so what it passes start-up accepts.
"""

from __future__ import annotations

import os
import stat
from dataclasses import replace

from pluggy import PluginManager
from twisted.internet.ssl import CertificateOptions

from mailgate.builtin import load_plugins
from mailgate.config import ConfigError, GatewayConfig
from mailgate.mailauth.keys import key_problems
from mailgate.net.sni import serve_by_name
from mailgate.net.tls import TLSLoadError, ensure_certificate, server_tls_options
from mailgate.store.durable import Owner, make_directories

TLS_DIRECTORY_MODE = 0o755  # the certificate is public; the key file itself is 0600


def check(config: GatewayConfig, plugins_relative_to: str | None = None) -> list[str]:
    """Every problem start-up would find, one line each; nothing is written.

    Call it in the directory twistd would run in (its --rundir): the files'
    paths are relative to it. twistd imports plugins before it changes
    there, so relative `plugins.paths` are taken relative to
    `plugins_relative_to` (where it would be started), when given.
    """
    if plugins_relative_to is not None:
        paths = tuple(os.path.join(plugins_relative_to, path) for path in config.plugins.paths)
        config = replace(config, plugins=replace(config.plugins, paths=paths))
    return plugin_problems(config) + file_problems(config) + dkim_problems(config)


def plugin_problems(config: GatewayConfig) -> list[str]:
    try:
        build_plugins(config)
    except ConfigError as error:
        return list(error.problems)
    return []


def build_plugins(config: GatewayConfig, extra: tuple = ()) -> PluginManager:
    """The plugin manager (ConfigError for a plugin that won't import, or a misspelt hook)."""
    return load_plugins(config, extra)


def file_problems(config: GatewayConfig) -> list[str]:
    """The state directories, then the TLS pair, relative to the current directory."""
    problems: dict[str, str] = {}
    for key, path in state_directories(config):
        if key not in problems and (problem := _directory_problem(key, path)):
            problems[key] = problem  # var/queue can't be made if var can't: say it once
    return list(problems.values()) + _tls_problems(config) + _relay_file_problems(config)


def smarthost_password(config: GatewayConfig) -> str:
    """The first line of relay.smarthost_password_file, line end dropped (OSError, ValueError)."""
    with open(config.relay.smarthost_password_file, encoding="utf-8") as handle:
        password = handle.readline().rstrip("\r\n")
    if not password:
        raise ValueError("its first line is empty")
    return password


def _relay_file_problems(config: GatewayConfig) -> list[str]:
    """The smarthost password and the MTA-STS CA file must be readable at start-up."""
    problems = []
    if config.relay.smarthost_username:
        try:
            smarthost_password(config)
        except OSError as error:
            problems.append(f"relay.smarthost_password_file: {config.relay.smarthost_password_file}: "
                            f"cannot read: {error.strerror or error}")
        except ValueError as error:
            problems.append(f"relay.smarthost_password_file: {config.relay.smarthost_password_file}: {error}")
    ca_file = config.relay.mta_sts_ca_file
    if ca_file and not os.access(ca_file, os.R_OK):
        problems.append(f"relay.mta_sts_ca_file: {ca_file}: cannot read")
    return problems


def state_directories(config: GatewayConfig) -> list[tuple[str, str]]:
    """(key, directory) for every directory the server writes in, outermost first."""
    state = config.server.state_dir
    return [("server.state_dir", state), ("server.state_dir", queue_directory(config)),
            ("store.maildir_root", config.store.maildir_root)]


def queue_directory(config: GatewayConfig) -> str:
    return os.path.join(config.server.state_dir, "queue")


def uses_tls(config: GatewayConfig) -> bool:
    return any(listener.tls != "none" for listener in config.listen)


def _tls_problems(config: GatewayConfig) -> list[str]:
    if not uses_tls(config):
        return []
    paths = {"tls.certificate": config.tls.certificate, "tls.key": config.tls.key}
    present = {key: os.path.lexists(path) for key, path in paths.items()}
    if all(present.values()):
        try:
            load_tls(config)
        except ConfigError as error:
            return list(error.problems)
        return []
    if any(present.values()):
        (missing,) = (key for key, there in present.items() if not there)
        (other,) = (key for key, there in present.items() if there)
        return [(f"{missing}: {paths[missing]} does not exist, but {other} {paths[other]} does: a self-signed "
                 f"pair is made only when both are missing, and never over a file of yours")]
    directories = {os.path.dirname(os.path.abspath(path)): key for key, path in reversed(paths.items())}
    problems = (_directory_problem(key, directory, below=os.getcwd()) for directory, key in directories.items())
    return [problem for problem in problems if problem]


def _directory_problem(key: str, path: str, below: str | None = None) -> str | None:
    """None if `path` is a directory or can be made (only below `below`, when given)."""
    if os.path.isdir(path):
        return None
    if os.path.lexists(path):
        return f"{key}: {path} is not a directory"
    ancestor = os.path.abspath(path)
    while not os.path.lexists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        return f"{key}: cannot create {path}: {ancestor} is not a directory"
    if below is not None and not _is_below(path, below):
        return (f"{key}: directory {path} does not exist (mailgate makes the directories of a generated "
                f"certificate only below its run directory, {below})")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"{key}: cannot create {path}: {ancestor} is not writable"
    return None


def _is_below(path: str, directory: str) -> bool:
    """Whether `path` is inside `directory`, symbolic links resolved (a --rundir may be one)."""
    real_directory = os.path.realpath(directory)
    return os.path.commonpath([real_directory, os.path.realpath(path)]) == real_directory


def prepare_files(config: GatewayConfig, owner: Owner | None = None) -> bool:
    """Make the state directories, and a self-signed pair when neither file exists (then True).

    Everything made here belongs to `owner` (the uid and gid twistd will
    switch to), so the server can still write there once privileges drop.
    Call after file_problems() found nothing.
    """
    for _, directory in state_directories(config):
        make_directories(directory, 0o700, owner)
    if not uses_tls(config):
        return False
    cert, key = config.tls.certificate, config.tls.key
    if os.path.lexists(cert) or os.path.lexists(key):
        return False
    for path in (cert, key):
        make_directories(os.path.dirname(os.path.abspath(path)), TLS_DIRECTORY_MODE, owner)
    return ensure_certificate(cert, key, config.server.hostname, owner)


def load_tls(config: GatewayConfig) -> CertificateOptions:
    """The listeners' TLS context factory, serving the [tls.sni] pairs by name; ConfigError naming
    the key when a pair can't be served."""
    tls = config.tls
    try:
        default = server_tls_options(tls.certificate, tls.key, tls.ciphers)
    except TLSLoadError as error:
        raise ConfigError([f"tls.{error.which}: {error}"]) from None
    by_name, problems = {}, []
    for name, pair in tls.sni.items():
        try:
            by_name[name] = server_tls_options(pair.certificate, pair.key, tls.ciphers)
        except TLSLoadError as error:
            problems.append(f'tls.sni."{name}".{error.which}: {error}')
    if problems:
        raise ConfigError(problems)
    serve_by_name(default, by_name)
    return default


def dkim_problems(config: GatewayConfig) -> list[str]:
    """Every DKIM key file under `dkim.keys_dir` that cannot be read or used, naming the file.

    A missing keys_dir, or a domain without keys, is no problem: that mail
    is not signed. A `<selector>.pem` that is there but unusable is one:
    mail from its domain would go out unsigned, or signed with the other
    selector only, without anyone noticing.
    """
    if config.dkim.sign == "off":
        return []
    return key_problems(config.dkim.keys_dir)


def access_problems(config: GatewayConfig) -> list[str]:
    """What this process (the user twistd switched to) cannot write or read but must (DKIM keys too)."""
    problems = dkim_problems(config)
    for key, directory in (("server.state_dir", queue_directory(config)),
                           ("store.maildir_root", config.store.maildir_root)):
        for path in [directory, *_subdirectories(directory)]:
            if os.path.isdir(path) and not os.access(path, os.W_OK | os.X_OK):
                problems.append(f"{key}: {path} is not writable by uid {os.geteuid()} ({_owner_and_mode(path)})")
    users = config.users.file
    if os.path.exists(users) and not os.access(users, os.R_OK):
        problems.append(f"users.file: {users} is not readable by uid {os.geteuid()} ({_owner_and_mode(users)})")
    return problems


def _subdirectories(directory: str) -> list[str]:
    try:
        return sorted(entry.path for entry in os.scandir(directory) if entry.is_dir(follow_symlinks=False))
    except OSError:
        return []


def _owner_and_mode(path: str) -> str:
    info = os.stat(path)
    return f"owner {info.st_uid}:{info.st_gid}, mode {stat.S_IMODE(info.st_mode):04o}"
