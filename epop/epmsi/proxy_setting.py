"""
What a proxy setting may be, wherever it is typed: C{twistd epop --proxy},
C{epop send --direct --proxy}, the relay's settings file, the workstation's
saved C{proxy}.  One rule, so that they all accept and refuse the same
values, and say the same thing about a bad one to the person who typed it.

A proxy is C{http://HOST:PORT}, or C{system} (any case) for this machine's
own settings.  C{HOST:PORT} alone means C{http://HOST:PORT}, as in the
system's own proxy settings; the port is required.  Only plain HTTP proxies
are supported, since the tunnel to e-PMSI is encrypted end to end inside
them.  The URL may name the proxy's user (C{http://dim@proxy:3128}), never
its password: that has settings of its own, kept out of command lines and
saved URLs.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from epop.addressing import host_port
from epop.messages import Text

__all__ = ["SYSTEM", "ProxyURL", "is_system", "parse_proxy_url"]

#: The proxy setting that means "whatever this machine is set to use".
SYSTEM = "system"

_EXPECTED = Text("expected http://HOST:PORT, or '{system}' to use this machine's proxy", system=SYSTEM)


def is_system(setting: str) -> bool:
    """Whether C{setting} asks for this machine's proxy settings."""
    return setting.strip().lower() == SYSTEM


@dataclass(frozen=True)
class ProxyURL:
    """An HTTP proxy's address, as written in a valid setting."""

    host: str
    port: int
    #: The proxy user named in the URL, if any.
    user: str | None = None

    @property
    def url(self) -> str:
        """The setting written the one way: C{http://[user@]host:port}, host in lower case."""
        account = f"{self.user}@" if self.user else ""
        return f"http://{account}{host_port(self.host, self.port)}"


def parse_proxy_url(text: str, *, credentials: str | Text) -> ProxyURL:
    """
    Read a proxy URL; C{system} is the caller's to recognize (L{is_system}).

    @param credentials: where the password goes instead of the URL, for the
        message that refuses it (it differs between a command line and a
        settings file).
    @raise ValueError: saying what is wrong and what is expected; a password
        in C{text} is never repeated.
    """
    value = text.strip()
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(
            Text("proxy {proxy} must not contain spaces or control characters: {expected}",
                 proxy=repr(_shown(value)), expected=_EXPECTED)
        )
    try:
        parts = urlsplit(value if "://" in value else "http://" + value)
        port = parts.port
    except ValueError:
        raise ValueError(
            Text("proxy {proxy} has an invalid port: {expected}", proxy=repr(_shown(value)), expected=_EXPECTED)
        ) from None
    if parts.scheme.lower() != "http":
        raise ValueError(
            Text("proxy {proxy}: only http:// proxies are supported (the tunnel to "
                 "e-PMSI is encrypted end to end inside it); {expected}",
                 proxy=repr(_shown(value)), expected=_EXPECTED)
        )
    if parts.password is not None:
        raise ValueError(Text("do not put the proxy password in the URL: {credentials}", credentials=credentials))
    if not parts.hostname:
        raise ValueError(Text("proxy {proxy} has no host name: {expected}", proxy=repr(value), expected=_EXPECTED))
    if port is None:
        raise ValueError(Text("proxy {proxy} has no port: {expected}", proxy=repr(value), expected=_EXPECTED))
    if port == 0:
        raise ValueError(Text("proxy {proxy} has an invalid port: {expected}", proxy=repr(value), expected=_EXPECTED))
    if parts.path not in ("", "/") or parts.query or parts.fragment or value.endswith(("?", "#")):
        raise ValueError(
            Text("proxy {proxy} must not have a path, query or fragment: expected "
                 "http://HOST:PORT, without a path, or '{system}' to use this machine's proxy",
                 proxy=repr(value), system=SYSTEM)
        )
    return ProxyURL(parts.hostname, port, parts.username or None)


def _shown(value: str) -> str:
    """C{value} fit to repeat in a message: any password in it replaced."""
    scheme, sep, rest = value.rpartition("://")
    authority, slash, tail = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    return f"{scheme}{sep}{userinfo}{at}{host}{slash}{tail}"
