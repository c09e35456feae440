"""
A local HTTPS stand-in for e-PMSI, for tests, demos and benchmarks.

e-PMSI's only documented service is a C{multipart/form-data} POST to
C{/syriusUpload.do} (fields such as C{userId}, C{userPwd}, C{year},
C{period}, C{finess} and the file part C{theFile}).  The sandbox does not try
to imitate anything more of e-PMSI: it accepts an upload on I{any} path,
stores the files it contains and answers a JSON receipt, so that a test (or a
person running a demo) can check exactly what the relay forwarded.

This service puts together the certificate authority (L{epop.sandbox.ca}),
the site (L{epop.sandbox.site}) and its upload handling
(L{epop.sandbox.uploads}), and listens over TLS.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.filepath import FilePath

from epop.addressing import host_port
from epop.messages import Text, log_format
from epop.sandbox.ca import (
    DEFAULT_HOSTNAMES,
    SandboxCertificates,
    ensure_certificates,
    parse_host,
    server_tls_options,
)
from epop.sandbox.retention import Keep
from epop.sandbox.site import DEFAULT_UPLOAD_PATH, SandboxSite, make_sandbox_site

__all__ = ["SandboxService"]


def _url_host(interface: str) -> str:
    """The host part of a URL reaching C{interface}."""
    if interface in ("", "0.0.0.0"):
        return "127.0.0.1"
    if interface == "::":
        return "::1"
    return interface


class SandboxService(Service):
    """
    Runs the sandbox over TLS, e.g. under C{twistd} or in a benchmark.

    Everything touching the disk or the network happens in C{startService},
    so building the service is free of side effects.  C{upload_path} is
    where the upload form at C{/} posts.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        directory: FilePath,
        port: int = 8443,
        interface: str = "127.0.0.1",
        hostnames: Sequence[str] = DEFAULT_HOSTNAMES,
        upload_path: str = DEFAULT_UPLOAD_PATH,
        keep: Keep = Keep(),
        reject: Mapping[str, int] | None = None,
        language: str = "en",
    ) -> None:
        self._reactor = reactor
        #: The language of the lines logged for the person who started it.
        self.language = language
        self.upload_path = upload_path
        self.keep = keep
        self.reject = dict(reject or {})
        self.directory = directory
        self.port_number = port
        self.interface = interface
        self.hostnames = tuple(hostnames)
        self.port: IListeningPort | None = None
        self.url: str | None = None
        self.certificates: SandboxCertificates | None = None
        self.site: SandboxSite | None = None

    def startService(self) -> None:
        """Create/reuse the certificates and start listening."""
        host = _url_host(self.interface)
        hostnames = list(self.hostnames)
        # The URL we advertise must be covered by the certificate.
        if all(parse_host(host) != parse_host(name) for name in hostnames):
            hostnames.append(host)
        certificates = ensure_certificates(self.directory.child("tls"), hostnames)
        site = make_sandbox_site(
            self.directory.child("uploads"), self._reactor, self.upload_path, self.keep, self.reject, self.language
        )
        options = server_tls_options(
            certificates.cert_path.getContent(), certificates.key_path.getContent()
        )
        port = self._reactor.listenSSL(
            self.port_number, site, options, interface=self.interface
        )
        super().startService()
        self.certificates, self.site, self.port = certificates, site, port
        self.url = f"https://{host_port(host, port.getHost().port)}"
        self.log.info(
            log_format(
                Text(
                    "e-PMSI sandbox listening on {url}; uploads are stored in "
                    "{upload_directory} (keeping {keep}); its CA certificate is {ca_path} "
                    "(pass it to --ca-file)"
                ),
                self.language,
            ),
            url=self.url,
            keep=self.keep.describe(self.language),
            ca_path=certificates.ca_path.path,
            upload_directory=site.upload_directory.path,
        )

    def stopService(self) -> Deferred[None]:
        """Stop listening and close open connections (in-flight uploads are dropped)."""
        super().stopService()
        port, site = self.port, self.site
        if port is None or site is None:
            return succeed(None)
        stopping = maybeDeferred(port.stopListening)
        closing = site.close_connections()
        done: Deferred[Any] = gatherResults([stopping, closing], consumeErrors=True)
        return done.addCallback(lambda _: None)
