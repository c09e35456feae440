"""
The outside programs that tests and the benchmark run: finding squid, its
Basic helper, a password hasher and haproxy, and preparing squid's folder
(its configuration, its password file, the user it runs as).

Standard library only, so the benchmark (C{benchmarks/}) can use it without
the test extras.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "SBIN_DIRECTORIES",
    "SQUID_BINARY_VARIABLE",
    "SquidUnavailable",
    "find_program",
    "find_squid_programs",
    "prepare_squid",
    "squid_config",
    "squid_user",
    "unsearchable_ancestors",
    "write_password_file",
]

#: Where system daemons live, often outside an ordinary user's PATH.
SBIN_DIRECTORIES = ("/usr/sbin", "/usr/local/sbin", "/sbin")

#: Whom squid may run as when started by root, in order of preference.
_UNPRIVILEGED_USERS = ("proxy", "squid", "nobody")

#: Where distributions put squid's helpers.
_SQUID_HELPER_DIRECTORIES = (
    "/usr/lib/squid",
    "/usr/lib64/squid",
    "/usr/libexec/squid",
    "/usr/local/libexec/squid",
)

#: Names a squid binary to use instead of searching for one.
SQUID_BINARY_VARIABLE = "EPOP_SQUID_BINARY"


class SquidUnavailable(Exception):
    """Squid, its Basic helper or a password hashing tool is missing."""


def find_program(name: str, directories: Sequence[str] = SBIN_DIRECTORIES) -> str | None:
    """C{name} on the PATH, else in C{directories}; C{None} if not executable anywhere."""
    found = shutil.which(name)
    if found:
        return found
    for directory in directories:
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _find_squid() -> str | None:
    configured = os.environ.get(SQUID_BINARY_VARIABLE)
    if configured:
        if os.path.isfile(configured) and os.access(configured, os.X_OK):
            return configured
        return None
    return find_program("squid")


def find_squid_programs() -> tuple[str, str, list[str]]:
    """
    The squid binary, its C{basic_ncsa_auth} helper and a command hashing a
    password (user and password appended), or raise L{SquidUnavailable}.
    """
    squid = _find_squid()
    if squid is None:
        where = os.environ.get(SQUID_BINARY_VARIABLE) or "squid"
        raise SquidUnavailable(f"{where} not found")
    helper_directories = [os.path.dirname(os.path.realpath(squid))]
    helper_directories += _SQUID_HELPER_DIRECTORIES
    helper = find_program("basic_ncsa_auth", helper_directories)
    if helper is None:
        raise SquidUnavailable(f"basic_ncsa_auth (squid's helper for {squid}) not found")
    htpasswd = find_program("htpasswd")
    if htpasswd is not None:
        return squid, helper, [htpasswd, "-n", "-b", "-m"]
    openssl = shutil.which("openssl")
    if openssl is not None:
        return squid, helper, [openssl, "passwd", "-apr1"]
    raise SquidUnavailable("neither htpasswd (apache2-utils) nor openssl found")


def squid_config(
    *,
    name: str,
    directory: str,
    port: int,
    helper: str,
    password_file: str,
    effective_user: str | None,
    allow_ports: Sequence[int],
    forbid_ports: Sequence[int] = (),
) -> str:
    """
    A squid that listens on 127.0.0.1:C{port}, keeps its files in
    C{directory}, caches nothing, requires Basic authentication (checked by
    C{helper} against C{password_file}) and tunnels (CONNECT) only to
    127.0.0.1 on C{allow_ports}, never on C{forbid_ports}.  C{name} labels
    the host name and realm.
    """
    folder = Path(directory)
    lines = [
        f"# Written for {name}; squid -N -f THIS_FILE.",
        f"http_port 127.0.0.1:{port}",
        f"visible_hostname {name}",
        "workers 1",
        f"pid_filename {folder / 'squid.pid'}",
        f"cache_log {folder / 'cache.log'}",
        f"coredump_dir {folder}",
        "acl has_request has request",
        f"access_log stdio:{folder / 'access.log'} has_request",
        "buffered_logs off",
        "logfile_rotate 0",
        "cache deny all",
        "cache_mem 8 MB",
        "digest_generation off",
        "shutdown_lifetime 0 seconds",
        "pinger_enable off",
        "icp_port 0",
        "htcp_port 0",
        f"auth_param basic program {helper} {password_file}",
        "auth_param basic children 2 startup=1 idle=1",
        f"auth_param basic realm {name}",
        "acl authenticated proxy_auth REQUIRED",
        "acl CONNECT method CONNECT",
        "acl loopback_destination dst 127.0.0.1",
        "http_access deny !authenticated",
    ]
    if effective_user is not None:
        lines.insert(3, f"cache_effective_user {effective_user}")
    if forbid_ports:
        lines.append(f"acl forbidden_ports port {' '.join(map(str, forbid_ports))}")
        lines.append("http_access deny forbidden_ports")
    if allow_ports:
        lines.append(f"acl allowed_ports port {' '.join(map(str, allow_ports))}")
        lines.append("http_access allow CONNECT loopback_destination allowed_ports")
    lines.append("http_access deny all")
    return "\n".join(lines) + "\n"


def squid_user() -> pwd.struct_passwd | None:
    """
    Whom squid runs as: None unless we are root, whom it refuses to stay.

    @raise SquidUnavailable: if we are root and there is no such user.
    """
    if os.geteuid() != 0:
        return None
    for name in _UNPRIVILEGED_USERS:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise SquidUnavailable(
        f"no unprivileged user for squid ({', '.join(_UNPRIVILEGED_USERS)})"
    )


def unsearchable_ancestors(directory: str) -> list[str]:
    """
    The folders above C{directory}, nearest first, that others may not
    search: squid's unprivileged user cannot reach C{directory} through them.
    """
    return [
        str(ancestor)
        for ancestor in Path(directory).resolve().parents
        if not os.stat(ancestor).st_mode & 0o001
    ]


def write_password_file(path: str, hasher: Sequence[str], user: str, password: str) -> None:
    """
    Write squid's password file: one C{htpasswd} line C{user:hash}
    (MD5/apr1, which C{basic_ncsa_auth} reads), made with C{hasher} (see
    L{find_squid_programs}), readable by its owner only.
    """
    if os.path.basename(hasher[0]) == "htpasswd":
        result = subprocess.run(
            [*hasher, user, password], capture_output=True, check=True, timeout=30
        )
        line = result.stdout.decode("ascii").strip()
    else:
        result = subprocess.run(
            [*hasher, password], capture_output=True, check=True, timeout=30
        )
        line = f"{user}:{result.stdout.decode('ascii').strip()}"
    Path(path).write_text(line + "\n", encoding="ascii")
    os.chmod(path, 0o600)


def prepare_squid(
    directory: str,
    *,
    name: str,
    port: int,
    helper: str,
    password_file: str,
    user: pwd.struct_passwd | None,
    allow_ports: Sequence[int],
    forbid_ports: Sequence[int] = (),
) -> str:
    """
    Make C{directory} ready for one start of squid on C{port} (see
    L{squid_config}): its configuration written, the logs of an earlier
    attempt removed, and the folder and its files given to C{user}
    (L{squid_user}) if squid runs as someone else.  Returns the
    configuration's path, for C{squid -N -f}.
    """
    folder = Path(directory)
    config = folder / "squid.conf"
    config.write_text(
        squid_config(
            name=name,
            directory=directory,
            port=port,
            helper=helper,
            password_file=password_file,
            effective_user=None if user is None else user.pw_name,
            allow_ports=allow_ports,
            forbid_ports=forbid_ports,
        ),
        encoding="ascii",
    )
    for leftover in ("cache.log", "access.log", "squid.out", "squid.pid"):
        with contextlib.suppress(FileNotFoundError):
            (folder / leftover).unlink()
    if user is not None:
        folder.chmod(0o755)
        for path in [folder, *folder.iterdir()]:
            os.chown(path, user.pw_uid, user.pw_gid)
    return str(config)
