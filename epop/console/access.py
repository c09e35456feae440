"""
Who may use the console, and from where.

Only the person who started the relay gets in: the start-up log holds a
URL with a one-time token, exchanged for a session cookie (or, with
C{--console-password-file}, a password signs in).  Every request must name
the console by one of its own addresses in C{Host} (a page from another
site, reached through DNS rebinding, names its own), and every change
(POST) must come from the console's own page: same C{Origin}, and the
session's CSRF token in a header that another site cannot set.

Every secret is compared with L{hmac.compare_digest}; sessions live in
memory only, so a relay restart signs everyone out.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import socket
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from epop.messages import Text, log_format, system_reason
from epop.relay.network_interfaces import local_addresses

#: The session cookie's name.
SESSION_COOKIE = b"epop_console"
#: Sessions kept at once: the oldest is dropped beyond this.
MAX_SESSIONS = 64
#: A session unused this long (seconds) is signed out.
SESSION_IDLE = 12 * 3600
#: Random bytes in the URL token, session ids and CSRF tokens.
TOKEN_BYTES = 32
#: Wrong passwords allowed in L{GUESS_WINDOW} seconds; then every sign-in
#: waits for the window to pass (the URL in the log still works).
MAX_WRONG_PASSWORDS = 10
GUESS_WINDOW = 60.0


#: The names of this machine a browser gives for a loopback console, through an SSH tunnel too.
_LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]"})


def load_console_password(path: str) -> str:
    """
    The console's password: the first line of C{path}, without its line
    end (like the proxy password file).

    @raise ValueError: the file cannot be read, or its first line is empty,
        saying which.
    """
    try:
        with open(path, encoding="utf-8") as f:
            line = f.readline()
    except (OSError, UnicodeDecodeError) as e:
        why = system_reason(e) if isinstance(e, OSError) else Text("it is not UTF-8 text")
        # Not the path: it may be the password itself, typed by mistake.
        raise ValueError(Text("cannot read the console password file given: {why}", why=why)) from None
    password = line.rstrip("\r\n")
    if not password:
        raise ValueError(Text("the console password file {path} has an empty first line", path=path))
    return password


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


def _decoded(value: str | bytes | None) -> str | None:
    """C{value} as text (UTF-8 bytes decoded); C{None} when it is not."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return value


def same_secret(given: str | bytes | None, expected: str) -> bool:
    """C{given} is C{expected}, compared in constant time."""
    text = _decoded(given)
    return text is not None and hmac.compare_digest(_digest(text), _digest(expected))


@dataclass
class Session:
    """One signed-in browser: its cookie value and its CSRF token."""

    id: str
    csrf: str
    last_used: float = field(default=0.0)


def host_names(host: str) -> list[str]:
    """
    The names a browser may use for a console listening on C{host} (an
    address as C{getHost()} gives it, or C{""} for a Unix socket), without
    the port: IPv6 addresses in brackets, as they appear in URLs.
    """
    if host == "":  # unix: socket, reached through a local forwarder
        return ["localhost"]
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return [host.lower()]
    if address.is_unspecified:
        names = [a.address.partition("%")[0] for a in local_addresses()]
        names += ["127.0.0.1", "::1", "localhost", socket.gethostname(), socket.getfqdn()]
    elif address.is_loopback:
        names = [str(address), "localhost"]
    else:
        names = [str(address)]
    seen: list[str] = []
    for name in names:
        spelled = f"[{name}]" if ":" in name else name
        if spelled and spelled.lower() not in seen:
            seen.append(spelled.lower())
    return seen


class ConsoleAccess:
    """
    The console's door: its one-time token, its sessions, its password (as
    a digest only) and the names it answers to.

    @param clock: for idle expiry.
    @param password: the console password, if C{--console-password-file}
        was given.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, password: str | None = None, *, language: str = "en") -> None:
        self._clock = clock
        #: The language of the lines logged for the administrator.
        self.language = language
        self._password = None if password is None else _digest(password)
        self._sessions: OrderedDict[bytes, Session] = OrderedDict()
        self._wrong: list[float] = []
        self.token = secrets.token_urlsafe(TOKEN_BYTES)
        self.secure = False
        self.port = 0
        #: Whether only this machine can reach the console (loopback, a Unix socket).
        self.local = True
        self._names: list[str] = []
        #: The console's base URL once listening (C{http://127.0.0.1:3359}).
        self.base_url: str | None = None

    @property
    def has_password(self) -> bool:
        return self._password is not None

    def listening_on(self, host: str, port: int, secure: bool) -> None:
        """The console listens: learn the names it answers to and its URL."""
        self.secure = secure
        self.port = port
        self._names = host_names(host)
        try:
            self.local = host == "" or ipaddress.ip_address(host.partition("%")[0]).is_loopback
        except ValueError:
            self.local = False
        scheme = "https" if secure else "http"
        first = self._names[0]
        if host and ipaddress.ip_address(host.partition("%")[0]).is_unspecified:
            first = next((n for n in self._names if n != "localhost"), first)
        self.base_url = f"{scheme}://{first}:{port}" if port else f"{scheme}://{first}"

    def url(self) -> str:
        """The URL that opens the console once."""
        return f"{self.base_url}/?token={self.token}"

    def log_url(self) -> None:
        if self.local:
            line = Text("Console: open {url} in a browser on this machine")
        else:
            line = Text("Console: open {url} in a browser")
        self.log.info(log_format(line, self.language), url=self.url())

    # Host and Origin

    def allowed_hosts(self) -> list[str]:
        """Every C{Host} header value the console accepts."""
        default = 443 if self.secure else 80
        found = []
        for name in self._names:
            found.append(f"{name}:{self.port}" if self.port else name)
            if self.port in (0, default):
                found.append(name)
        return found

    def host_allowed(self, host: bytes | None) -> bool:
        if not host:
            return False
        try:
            text = host.decode("ascii").lower()
        except UnicodeDecodeError:
            return False
        if text in self.allowed_hosts():
            return True
        # On loopback, any port: an SSH tunnel may bring the console to
        # another local port.  A rebinding attack names its own host, never these.
        name, _, port = text.rpartition(":")
        return self.local and name in _LOOPBACK_NAMES and port.isdigit()

    def origin_allowed(self, origin: bytes | None, host: bytes | None) -> bool:
        """
        C{Origin} is the console's own: its scheme, and the host and port
        the request's (already checked) C{Host} header named.
        """
        if not origin or not self.host_allowed(host):
            return False
        assert host is not None
        scheme = b"https://" if self.secure else b"http://"
        return hmac.compare_digest(origin.lower(), scheme + host.lower())

    # Token, password, sessions

    def exchange_token(self, token: str | bytes | None) -> Session | None:
        """
        A new session for the URL's token, which is then used up: a new
        one is made and its URL logged.  C{None} for a wrong token.
        """
        if not same_secret(token, self.token):
            return None
        self.token = secrets.token_urlsafe(TOKEN_BYTES)
        if self.base_url is not None:
            self.log_url()
        return self._open()

    def guessing_blocked(self) -> bool:
        """Too many wrong passwords lately: no sign-in until the window passes."""
        since = self._clock.seconds() - GUESS_WINDOW
        self._wrong = [t for t in self._wrong if t > since]
        return len(self._wrong) >= MAX_WRONG_PASSWORDS

    def sign_in(self, password: str | bytes | None) -> Session | None:
        """
        A new session for the right password; C{None} otherwise, and
        always while L{guessing_blocked}.
        """
        text = _decoded(password)
        if self._password is None or text is None or self.guessing_blocked():
            return None
        if not hmac.compare_digest(_digest(text), self._password):
            self._wrong.append(self._clock.seconds())
            return None
        return self._open()

    def _open(self) -> Session:
        session = Session(
            secrets.token_urlsafe(TOKEN_BYTES),
            secrets.token_urlsafe(TOKEN_BYTES),
            self._clock.seconds(),
        )
        self._sessions[_digest(session.id)] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session

    def session(self, cookie: bytes | None) -> Session | None:
        """
        The live session of this cookie value, marked as used now; C{None}
        for no cookie, an unknown one or one idle too long (then forgotten).
        """
        if not cookie:
            return None
        try:
            key = _digest(cookie.decode("ascii"))
        except UnicodeDecodeError:
            return None
        session = self._sessions.get(key)  # keyed by digest: no timing on the value
        if session is None or not same_secret(cookie, session.id):
            return None
        now = self._clock.seconds()
        if now - session.last_used > SESSION_IDLE:
            del self._sessions[key]
            return None
        session.last_used = now
        self._sessions.move_to_end(key)
        return session

    def csrf_allowed(self, session: Session, given: bytes | None) -> bool:
        return same_secret(given, session.csrf)

    def cookie_attributes(self) -> dict[str, object]:
        """C{request.addCookie} keywords for the session cookie."""
        return {"path": b"/", "httpOnly": True, "sameSite": "strict", "secure": self.secure}

    def sessions(self) -> Iterable[Session]:
        return list(self._sessions.values())
