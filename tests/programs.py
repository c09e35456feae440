"""
Finding the outside programs that tests and the benchmark run: squid, its
Basic helper, a password hasher, haproxy.

Standard library only, so the benchmark (C{benchmarks/}) can use it without
the test extras.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence

__all__ = [
    "SBIN_DIRECTORIES",
    "SQUID_BINARY_VARIABLE",
    "SquidUnavailable",
    "find_program",
    "find_squid_programs",
]

#: Where system daemons live, often outside an ordinary user's PATH.
SBIN_DIRECTORIES = ("/usr/sbin", "/usr/local/sbin", "/sbin")

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
