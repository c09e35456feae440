"""
Which HTTP proxy reaches e-PMSI, and with which account: the C{--proxy}
setting (an address, or C{system}), its password, and L{ProxyError}, what
a proxy that fails us is reported as.

The tunnel through that proxy is L{epop.epmsi.tunnel}; what this machine's
own settings say is L{epop.epmsi.system_proxy}.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from epop.addressing import host_port
from epop.epmsi.proxy_setting import SYSTEM, is_system, parse_proxy_url
from epop.epmsi.system_proxy import discover_proxy
from epop.errors import UpstreamError
from epop.messages import Text, reason_of, unreadable_secret_file

__all__ = [
    "PASSWORD_VARIABLE",
    "SYSTEM",
    "resolve_proxy",
    "ProxyAccountError",
    "ProxyConfig",
    "ProxyError",
    "load_proxy_password",
]

#: The environment variable that may hold the proxy password.
PASSWORD_VARIABLE = "EPOP_PROXY_PASSWORD"

#: Where the password goes instead of a proxy URL, on a command line.
_CREDENTIALS = Text("use a password file or the {variable} environment variable", variable=PASSWORD_VARIABLE)


class ProxyAccountError(ValueError):
    """
    The proxy's account cannot work: a user without a password, or without
    a proxy.  Its own type, so that a caller can name the user's setting
    rather than the proxy's.
    """


@dataclass(frozen=True)
class ProxyConfig:
    """
    An HTTP proxy and, optionally, the account it wants.

    The password is never part of the URL: it comes from a file or from
    C{EPOP_PROXY_PASSWORD}, so that C{ps} and shell histories never show it.
    """

    host: str
    port: int
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    #: The workstation's language ("fr" or "en"), asked of the proxy as
    #: C{Accept-Language}: the e-POP relay answers its refusals in it.
    language: str | None = field(default=None, compare=False)

    @classmethod
    def from_url(
        cls, url: str, user: str | None = None, password: str | None = None
    ) -> "ProxyConfig":
        """
        The proxy at C{url} (L{epop.epmsi.proxy_setting.parse_proxy_url}:
        C{http://[USER@]HOST:PORT}, never a password), with this account;
        C{user}, when given, wins over the URL's.
        """
        found = parse_proxy_url(url, credentials=_CREDENTIALS)
        return cls(found.host, found.port, user or found.user, password)

    def check(self) -> None:
        """
        Refuse a proxy that cannot work, however it was made: no host name, a
        port out of range, a user without a password (L{ProxyAccountError}).
        """
        if not isinstance(self.host, str) or not self.host.strip():
            raise ValueError(Text("proxy host {host} is not a host name", host=repr(self.host)))
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise ValueError(
                Text("proxy {proxy} has an invalid port: expected 1 to 65535",
                     proxy=repr(f"http://{self.host}:{self.port}"))
            )
        if self.user is not None and self.password is None:
            raise ProxyAccountError(Text("the proxy user {user} needs a password", user=repr(self.user)))

    @property
    def address(self) -> str:
        return host_port(self.host, self.port)

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def authorization(self) -> bytes | None:
        """The C{Proxy-Authorization} value, or C{None} without a user."""
        if self.user is None:
            return None
        secret = f"{self.user}:{self.password or ''}".encode()
        return b"Basic " + base64.b64encode(secret)


def load_proxy_password(
    path: str | None, environ: Mapping[str, str] | None = None
) -> str | None:
    """
    The proxy password from C{path} (first line), else from
    C{EPOP_PROXY_PASSWORD}, else C{None}.
    """
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                line = f.readline()
        except OSError as e:
            raise ValueError(
                unreadable_secret_file(
                    path,
                    e,
                    Text("cannot read the proxy password file {path}: {why}"),
                    Text("cannot read the proxy password file given: {why}"),
                )
            ) from None
        return line.rstrip("\r\n")
    environ = os.environ if environ is None else environ
    return environ.get(PASSWORD_VARIABLE) or None


def resolve_proxy(
    setting: str | None,
    target_url: str,
    *,
    user: str | None = None,
    password: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[ProxyConfig | None, str]:
    """
    Turn a C{--proxy} setting (C{None}, C{http://HOST:PORT} or C{system})
    into the proxy to use for C{target_url}, and say where it came from.

    @raise ValueError: for a setting that cannot be used, saying why;
        L{ProxyAccountError} when it is the user that cannot be used.
    """
    if not setting:
        if user is not None:
            raise ProxyAccountError(Text("a proxy user was given without a proxy"))
        return None, "no proxy set"
    if not is_system(setting):
        proxy, source = ProxyConfig.from_url(setting, user, password), "settings"
    else:
        found = discover_proxy(target_url, environ=environ)
        if found.proxy is None:
            if found.unresolved:
                raise ValueError(found.text())
            return None, found.describe()
        proxy = ProxyConfig.from_url(found.proxy, user or found.user, password)
        source = found.source
    try:
        proxy.check()
    except ProxyAccountError as e:
        raise ProxyAccountError(
            Text("{problem}: put it in a password file, or in the {variable} environment variable",
                 problem=reason_of(e), variable=PASSWORD_VARIABLE)
        ) from None
    return proxy, source


class ProxyError(UpstreamError):
    """The proxy would not, or could not, open the tunnel to e-PMSI."""

    def __init__(self, proxy: ProxyConfig, cause: str, text: Text) -> None:
        super().__init__(
            "epmsi-unreachable",
            Text(
                "Could not reach e-PMSI through the proxy {proxy}: {reason}",
                proxy=proxy.address,
                reason=text,
            ),
            cause,
        )
        #: The proxy refused or failed, and why in words: for a caller that
        #: says it about another destination than e-PMSI.
        self.proxy = proxy
        self.reason = text
