"""
The users who may open HTTPS tunnels through the relay (C{--tunnel-users
FILE}): an htpasswd file of bcrypt entries, as C{htpasswd -B} writes them.

Only bcrypt is taken: the other htpasswd formats (C{{SHA}}, C{$apr1$},
crypt, plain text) are fast to guess from a stolen file, and a file that
mixes them would protect some users less than the administrator thinks.  A
file the relay cannot take is refused at start, naming the line.

bcrypt is slow on purpose (tens of milliseconds): each check runs in the
reactor's thread pool, never on the reactor thread, and a success is
remembered for a while (L{REMEMBER_SECONDS}) so that a browser opening ten
tunnels costs one bcrypt run, not ten.  What is remembered is a salted
SHA-256 of the password, never the password; a failure is never
remembered.  The file is read again when it changes on disk (its
modification time, size or inode), so that C{htpasswd -B FILE bob} takes
effect without a restart; a changed file that no longer reads keeps the
users the relay had, and the relay logs why.

Nothing here logs or journals a password or an C{Authorization} header.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from hashlib import sha256
from typing import Any

import bcrypt
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from epop.messages import Text, log_format, reason_of, unreadable_secret_file

__all__ = [
    "REMEMBER_ENTRIES",
    "REMEMBER_SECONDS",
    "TunnelUsers",
    "basic_credentials",
    "read_users",
]

#: How many users' recent successes are remembered at most.
REMEMBER_ENTRIES = 256
#: How long a success is remembered, in seconds.
REMEMBER_SECONDS = 600.0
#: bcrypt reads at most this many bytes of a password; htpasswd -B cuts there too.
_BCRYPT_LENGTH = 72

_BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
#: Checked against when the user is unknown, so that an unknown user takes
#: as long to refuse as a wrong password (cost 5, htpasswd -B's default; the
#: password of this hash was random and is lost).
_NOBODY = b"$2b$05$ze89K9xlWZJrixOVE0mYMuBx97GB6hFCRZE/sM2ub835HWFGVL6Km"

#: Runs a function in a thread; fires with its result on the reactor thread.
InThread = Callable[..., "Deferred[Any]"]


def read_users(path: str) -> dict[str, bytes]:
    """
    Each user of the htpasswd file at C{path} with its bcrypt hash.  Blank
    lines and C{#} comments are skipped, as Apache does.

    @raise ValueError: the file cannot be read or holds anything but
        bcrypt entries, saying which line and what to do.
    """
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as e:
        raise ValueError(
            unreadable_secret_file(
                path, e, Text("cannot read the users file {path}: {why}"), Text("cannot read the users file given: {why}")
            )
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(Text("{path}: the users file is not UTF-8 text", path=path)) from None
    users: dict[str, bytes] = {}
    lines: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = Text("{path}, line {line}", path=path, line=number)
        user, colon, hashed = line.partition(":")
        # The line itself is never quoted: it may hold a plain password.
        if not colon or not user or not hashed:
            raise ValueError(
                Text("{where}: expected USER:HASH, as htpasswd -B writes it (htpasswd -B {path} USER)", where=where, path=path)
            )
        if user in lines:
            raise ValueError(Text("{where}: user {user!r} is already on line {first}", where=where, user=user, first=lines[user]))
        if not hashed.startswith(("$2y$", "$2b$", "$2a$")):
            raise ValueError(Text("{where}: user {user!r}: only bcrypt entries are accepted (htpasswd -B)", where=where, user=user))
        if _BCRYPT.fullmatch(hashed) is None:
            raise ValueError(
                Text(
                    "{where}: user {user!r}: the bcrypt entry is damaged (expected 60 characters "
                    "such as $2y$05$ followed by 53 of [./A-Za-z0-9]); set the password again "
                    "with htpasswd -B {path} {user}",
                    where=where,
                    user=user,
                    path=path,
                )
            )
        users[user] = hashed.encode("ascii")
        lines[user] = number
    if not users:
        raise ValueError(Text("{path}: the users file has no users; add one with htpasswd -B {path} USER", path=path))
    return users


def basic_credentials(authorization: str) -> tuple[str, str] | None:
    """
    The user name and password of a C{Proxy-Authorization: Basic} value;
    C{None} when there is none (no header, or another scheme).  Undecodable
    credentials come back as a user name that exists nowhere (C{""}), so
    that they are refused as wrong ones.
    """
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return "", ""
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        # Older browsers send ISO-8859-1 despite charset="UTF-8".
        text = decoded.decode("latin-1")
    user, colon, password = text.partition(":")
    return (user, password) if colon else ("", "")


def _verify(password: bytes, hashed: bytes) -> bool:
    """bcrypt's own check, in a worker thread."""
    return bcrypt.checkpw(password[:_BCRYPT_LENGTH], hashed)


@dataclass(frozen=True)
class _Remembered:
    """A recent success: the salted digest of the password, and its entry."""

    digest: bytes
    hashed: bytes
    until: float


@dataclass(frozen=True)
class _Stamp:
    """What tells that the file changed on disk."""

    mtime_ns: int
    size: int
    inode: int

    @classmethod
    def of(cls, path: str) -> "_Stamp | None":
        try:
            found = os.stat(path)
        except OSError:
            return None
        return cls(found.st_mtime_ns, found.st_size, found.st_ino)


class TunnelUsers:
    """
    The users of C{--tunnel-users}: L{check} says whether a user name and
    password may open tunnels.

    @param path: the htpasswd file, read now (L{read_users}'s C{ValueError}
        if it cannot be taken).
    @param clock: times the remembered successes.
    @param in_thread: runs bcrypt off the reactor thread
        (L{for_reactor} gives the reactor's thread pool).
    @param language: the language of the lines it logs for the
        administrator when the file is read again.
    """

    log = Logger()

    def __init__(
        self,
        path: str,
        clock: Any,
        in_thread: InThread,
        *,
        remember_entries: int = REMEMBER_ENTRIES,
        remember_seconds: float = REMEMBER_SECONDS,
        language: str = "en",
    ) -> None:
        # Absolute: twistd may change directory once the relay runs.
        self.path = os.path.abspath(path)
        self._clock = clock
        self._in_thread = in_thread
        self.language = language
        self._remember_entries = remember_entries
        self._remember_seconds = remember_seconds
        self._stamp = _Stamp.of(self.path)
        self._users: Mapping[str, bytes] = read_users(self.path)
        # Per process: a digest cannot be compared with anything outside it.
        self._salt = os.urandom(16)
        self._remembered: OrderedDict[str, _Remembered] = OrderedDict()

    @classmethod
    def for_reactor(cls, path: str, reactor: Any, language: str = "en") -> "TunnelUsers":
        """The users of C{path}, checked in C{reactor}'s thread pool; its log lines in C{language}."""

        def in_thread(function: Callable[..., Any], *args: Any) -> Deferred[Any]:
            return deferToThreadPool(reactor, reactor.getThreadPool(), function, *args)

        return cls(path, reactor, in_thread, language=language)

    @property
    def users(self) -> list[str]:
        """The user names, sorted."""
        return sorted(self._users)

    def check(self, user: str, password: str) -> Deferred[bool]:
        """
        Whether C{password} is C{user}'s; fires on the reactor thread.  An
        unknown user costs a bcrypt run too, so that timing does not tell
        which names exist.
        """
        self._reread_if_changed()
        hashed = self._users.get(user)
        secret = password.encode("utf-8")
        digest = sha256(self._salt + secret).digest()
        now = self._clock.seconds()
        remembered = self._remembered.get(user)
        if remembered is not None and (remembered.until <= now or remembered.hashed != hashed):
            del self._remembered[user]
            remembered = None
        if remembered is not None and hmac.compare_digest(remembered.digest, digest):
            self._remembered.move_to_end(user)
            return succeed(True)
        d = self._in_thread(_verify, secret, _NOBODY if hashed is None else hashed)

        def checked(right: bool) -> bool:
            if not right or hashed is None:
                return False
            # The entry that was checked: a file changed meanwhile does not matter.
            self._remember(user, _Remembered(digest, hashed, self._clock.seconds() + self._remember_seconds))
            return True

        return d.addCallback(checked)

    def _remember(self, user: str, success: _Remembered) -> None:
        self._remembered[user] = success
        self._remembered.move_to_end(user)
        while len(self._remembered) > self._remember_entries:
            self._remembered.popitem(last=False)

    def _reread_if_changed(self) -> None:
        stamp = _Stamp.of(self.path)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            users = read_users(self.path)
        except ValueError as e:
            self.log.error(
                log_format(
                    Text("--tunnel-users {path}: {problem}; the relay keeps the {count} user(s) it had"),
                    self.language,
                ),
                path=self.path,
                problem=reason_of(e).render(self.language),
                count=len(self._users),
            )
            return
        self._users = users
        self.log.info(
            log_format(Text("--tunnel-users: {path} read again: {count} user(s)"), self.language),
            path=self.path,
            count=len(users),
        )
