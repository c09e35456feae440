"""
e-PMSI's origin: the one HTTPS URL the relay and direct sends may reach, its
default, and the certificates trusted for it (read by L{epop.certificates}).

Kept apart from the HTTP client so that whatever only needs the URL or the
trust roots (settings, the workstation's TLS to its relay, the system-proxy
discovery) imports neither treq nor the proxy tunnel.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from twisted.internet.ssl import platformTrust
from twisted.web.client import BrowserLikePolicyForHTTPS

from epop.addressing import url_host
from epop.certificates import trust_root_from_pem
from epop.messages import Text

__all__ = [
    "DEFAULT_EPMSI_URL",
    "EpmsiOrigin",
    "tls_policy",
    "trust_root_from_pem",
]

DEFAULT_EPMSI_URL = "https://www.epmsi.atih.sante.fr"

@dataclass(frozen=True)
class EpmsiOrigin:
    """Where the relay sends everything: scheme, host and port, nothing else."""

    host: str
    port: int

    @classmethod
    def from_url(cls, url: str) -> "EpmsiOrigin":
        parts = urlsplit(url)
        if parts.scheme != "https":
            raise ValueError(Text("e-PMSI URL must start with https:// (got {url})", url=repr(url)))
        if not parts.hostname:
            raise ValueError(Text("e-PMSI URL has no host name: {url}", url=repr(url)))
        if parts.username or parts.password:
            raise ValueError(Text("e-PMSI URL must not hold a user name or password"))
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(
                Text("e-PMSI URL must be an origin such as {example}, without a path (got {url})",
                     example=DEFAULT_EPMSI_URL, url=repr(url))
            )
        try:
            port = parts.port or 443
        except ValueError:
            raise ValueError(Text("e-PMSI URL has an invalid port: {url}", url=repr(url))) from None
        return cls(parts.hostname, port)

    @property
    def url(self) -> str:
        return f"https://{url_host(self.host)}" + ("" if self.port == 443 else f":{self.port}")

    def url_for(self, path: str) -> str:
        """The absolute URL of C{path}, which must start with a slash."""
        if not path.startswith("/"):
            raise ValueError(Text("path must start with '/': {path}", path=repr(path)))
        return self.url + path


def tls_policy(ca_file: str | None = None) -> BrowserLikePolicyForHTTPS:
    """Verify e-PMSI's certificate and host name, against C{ca_file} or the system."""
    root = trust_root_from_pem(ca_file) if ca_file else platformTrust()
    return BrowserLikePolicyForHTTPS(trustRoot=root)
