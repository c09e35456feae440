"""
Helpers shared by the test suite: a real HTTPS e-PMSI sandbox on loopback,
trusted through a throw-away C{trustme} CA, and big-file utilities that never
hold a whole file in memory.
"""

from __future__ import annotations

import hashlib
import socket
from dataclasses import dataclass, field
from typing import Any, Callable

import trustme
from treq.client import HTTPClient
from twisted.internet import task
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.ssl import Certificate
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase
from twisted.web.client import URI, Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from epop.sandbox.ca import server_tls_options
from epop.sandbox.site import DEFAULT_UPLOAD_PATH, SandboxSite, make_sandbox_site
from epop.epmsi.origin import tls_policy
from epop.epmsi.upstream import EpmsiEndpointFactory
from tests.random_files import write_random_file

__all__ = [
    "InMemoryBody",
    "TestSandbox",
    "free_port",
    "deferred_poll_until",
    "make_trustme_sandbox",
    "make_trusting_client",
    "poll_until",
    "sha256_file",
    "write_random_file",
]

_CHUNK = 1 << 20


@implementer(IBodyProducer)
class InMemoryBody:
    """
    A small request body written at once, with its length known or, with
    C{known_length=False}, not (which makes HTTP clients send it chunked).
    """

    def __init__(self, chunks: list[bytes], known_length: bool = True) -> None:
        self._chunks = chunks
        self.length = sum(map(len, chunks)) if known_length else UNKNOWN_LENGTH

    def startProducing(self, consumer: Any) -> Deferred[None]:
        for chunk in self._chunks:
            consumer.write(chunk)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now, for a test to use or to find closed."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def sha256_file(path: FilePath | str) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    name = path.path if isinstance(path, FilePath) else path
    digest = hashlib.sha256()
    with open(name, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class TestSandbox:
    """
    A running sandbox, as seen by a test.

    C{url} is C{https://127.0.0.1:<port>}; C{ca_path} is the PEM file of the
    CA to trust (e.g. for C{--ca-file}); C{ca} can issue more certificates.
    """

    __test__ = False  # not a test case, whatever pytest thinks of the name

    url: str
    ca_path: str
    ca: trustme.CA
    upload_directory: FilePath
    port: IListeningPort
    site: SandboxSite = field(repr=False)
    #: The server's own certificate (PEM), e.g. to pin its public key in a browser.
    certificate_pem: bytes = field(default=b"", repr=False)

    def complete_files(self) -> list[FilePath]:
        """
        Every file the sandbox has fully received so far, in upload order.

        Hidden folders (uploads still arriving) and C{.partial} files are
        not complete and are left out.
        """
        found: list[FilePath] = []
        if not self.upload_directory.isdir():
            return found
        for upload in sorted(self.upload_directory.children()):
            if upload.basename().startswith(".") or not upload.isdir():
                continue
            for stored in sorted(upload.children()):
                name = stored.basename()
                if stored.isfile() and not name.startswith(".") and not name.endswith(
                    ".partial"
                ):
                    found.append(stored)
        return found

    def sha256_of(self, path: FilePath | str) -> str:
        """SHA-256 hex digest of a stored (or any) file."""
        return sha256_file(path)

    def client(self, reactor: Any) -> HTTPClient:
        """A treq client trusting this sandbox's CA, without a shared pool."""
        return make_trusting_client(reactor, self.ca.cert_pem.bytes())


def running_reactor() -> Any:
    """The running reactor, imported late so trial's --reactor choice holds."""
    from twisted.internet import reactor

    return reactor


def make_trusting_client(reactor: Any, ca_pem: bytes) -> HTTPClient:
    """
    A treq client that trusts only C{ca_pem} and does not keep connections
    alive, so no socket outlives a test (trial's dirty-reactor check).
    """
    policy = BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(ca_pem))
    pool = HTTPConnectionPool(reactor, persistent=False)
    return HTTPClient(Agent(reactor, contextFactory=policy, pool=pool))


def make_trustme_sandbox(
    testcase: TestCase,
    reactor: Any,
    upload_path: str = DEFAULT_UPLOAD_PATH,
    upload_directory: FilePath | None = None,
) -> TestSandbox:
    """
    Start a sandbox over TLS on C{127.0.0.1}, port 0, for one test.

    Synchronous: listening is immediate, so this returns the L{TestSandbox}
    itself, not a Deferred.  The server certificate (for C{127.0.0.1} and
    C{localhost}) comes from a fresh C{trustme} CA whose PEM is written to
    C{ca_path}.  Cleanups stop listening and abort any connection still
    open on the server side, so trial never sees a dirty reactor.
    C{upload_path} is where the sandbox's upload form posts;
    C{upload_directory}, where it stores uploads (another sandbox's, to
    restart it; by default a fresh folder).
    """
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    base = FilePath(testcase.mktemp())
    base.makedirs()
    ca_file = base.child("ca.pem")
    ca.cert_pem.write_to_path(ca_file.path)
    if upload_directory is None:
        upload_directory = base.child("uploads")

    site = make_sandbox_site(upload_directory, reactor, upload_path)
    options = server_tls_options(
        b"".join(pem.bytes() for pem in server.cert_chain_pems),
        server.private_key_pem.bytes(),
    )
    port = reactor.listenSSL(0, site, options, interface="127.0.0.1")
    # Cleanups run last-in first-out: stop accepting, then close what is open.
    testcase.addCleanup(site.close_connections)
    testcase.addCleanup(port.stopListening)
    return TestSandbox(
        url=f"https://127.0.0.1:{port.getHost().port}",
        ca_path=ca_file.path,
        ca=ca,
        upload_directory=upload_directory,
        port=port,
        site=site,
        certificate_pem=server.cert_chain_pems[0].bytes(),
    )


async def poll_until(
    reactor: Any,
    predicate: Callable[[], bool],
    attempts: int = 100,
    interval: float = 0.05,
) -> bool:
    """
    Check C{predicate} up to C{attempts} times, C{interval} seconds apart.

    Returns whether it became true, so the test decides how to fail instead
    of hanging.  Use with C{Deferred.fromCoroutine} or from an C{async}
    test (trial runs those directly).
    """
    for _ in range(attempts):
        if predicate():
            return True
        await task.deferLater(reactor, interval, lambda: None)
    return predicate()


def deferred_poll_until(
    reactor: Any,
    predicate: Callable[[], bool],
    attempts: int = 100,
    interval: float = 0.05,
) -> Deferred[bool]:
    """L{poll_until} as a Deferred, for callback-style tests."""
    return Deferred.fromCoroutine(poll_until(reactor, predicate, attempts, interval))


def socket_of(transport: Any) -> Any:
    """The file descriptor (TCP connection) under C{transport}'s wrappers."""
    while not isinstance(transport, FileDescriptor):
        transport = transport.transport
    return transport


async def connect_to_epmsi(
    testcase: TestCase, reactor: Any, sandbox: "TestSandbox", proxy: Any = None
) -> Any:
    """
    Open a connection to C{sandbox} the way the relay reaches e-PMSI, and
    return its protocol; the connection is closed at the end of the test.
    """
    endpoints = EpmsiEndpointFactory(reactor, tls_policy(sandbox.ca_path), proxy=proxy)
    endpoint = endpoints.endpointForURI(URI.fromBytes(sandbox.url.encode("ascii")))
    protocol = await endpoint.connect(Factory.forProtocol(Protocol))
    testcase.addCleanup(protocol.transport.abortConnection)
    return protocol


class ShutdownClock(Clock):
    """A Clock that the CLI can also register shutdown triggers with."""

    def __init__(self) -> None:
        super().__init__()
        self.triggers: list[Any] = []

    def addSystemEventTrigger(self, phase: str, event: str, f: Any, *args: Any) -> None:
        self.triggers.append((phase, event, f))


class SilentServer:
    """
    A loopback server that accepts connections and never says a word: a
    relay or e-PMSI that hangs.  Closed, with its connections, at the end
    of the test.

    @ivar accepted: the connections it took, in order.
    @ivar port: the port it listens on.
    """

    def __init__(self, testcase: TestCase, reactor: Any) -> None:
        self.accepted: list[Protocol] = []
        accepted = self.accepted

        class Silent(Protocol):
            def connectionMade(self) -> None:
                accepted.append(self)

        listening = reactor.listenTCP(0, Factory.forProtocol(Silent), interface="127.0.0.1")
        self.port: int = listening.getHost().port
        testcase.addCleanup(listening.stopListening)
        testcase.addCleanup(lambda: [p.transport.abortConnection() for p in accepted])
