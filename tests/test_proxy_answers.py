"""
What the workstation shows when a proxy refuses its CONNECT: the proxy's
own words when they are short plain text (the e-POP relay's, in the
workstation's language), today's guess from the status otherwise (squid's
HTML pages), and never a hang on a body that is huge, slow or endless.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from epop.epmsi.proxy import ProxyConfig, ProxyError
from epop.epmsi.proxy_words import MAX_BODY, MAX_SHOWN, body_to_read, proxy_words
from epop.epmsi.tunnel import TunnelEndpoint
from epop.workstation.client import test_connection
from tests.relaying import start_relay
from tests.squid import start_squid
from tests.support import free_port, make_trustme_sandbox, poll_until, write_random_file
from tests.test_cli import run_epop

_EXIT_FAILED = 1  # docs/exit-status.md: any failure to reach e-PMSI


class RelayAsProxyTests(TestCase):
    """The relay's CONNECT mode refuses; the workstation shows the relay's words."""

    def setUp(self) -> None:
        self.sandbox = make_trustme_sandbox(self, reactor)
        self.config_path = os.path.abspath(self.mktemp())

    def relay(self, epmsi: str | None = None, **settings: Any) -> str:
        relay = start_relay(self, reactor, epmsi or self.sandbox.url, self.sandbox.ca_path, **settings)
        self.running = relay
        return f"http://127.0.0.1:{relay.port}"

    async def epop_test(self, proxy: str, *argv: str, environ: dict[str, str] | None = None) -> tuple[int, str]:
        code, out, err = await run_epop(
            self.config_path, *argv, "test", "--direct", "--proxy", proxy,
            "--epmsi", self.sandbox.url, "--ca-file", self.sandbox.ca_path, environ=environ,
        )
        return code, err

    async def test_outside_allowlist(self) -> None:
        """A workstation outside --allow is told so, in the language of --lang over the locale's."""
        proxy = self.relay(allow=("10.0.0.0/8",))
        code, err = await self.epop_test(proxy, "--lang", "en", environ={"LANG": "fr_FR.UTF-8"})
        self.assertEqual(code, _EXIT_FAILED, err)
        self.assertIn(
            f"Could not reach e-PMSI through the proxy {proxy[7:]}: the proxy refused the tunnel "
            "(403 Forbidden): \"Client 127.0.0.1:",
            err,
        )
        self.assertIn(" is not allowed to connect to this e-POP relay\"", err)
        self.assertNotIn("Ask the IT department to allow HTTPS", err)
        self.assertEqual(self.sandbox.complete_files(), [])

    async def test_outside_allowlist_in_french(self) -> None:
        """A French workstation (its locale, no --lang) gets the relay's words in French."""
        proxy = self.relay(allow=("10.0.0.0/8",))
        code, err = await self.epop_test(proxy, environ={"LANG": "fr_FR.UTF-8"})
        self.assertEqual(code, _EXIT_FAILED, err)
        self.assertIn("le proxy a refusé le tunnel (403 Forbidden) : « Le client 127.0.0.1:", err)
        self.assertIn(" n'est pas autorisé à se connecter à ce relais e-POP »", err)

    async def test_epmsi_down(self) -> None:
        """e-PMSI not listening: `epop send` shows the relay's cause, and exits 1."""
        port = free_port()
        epmsi = f"https://127.0.0.1:{port}"
        proxy = self.relay(epmsi=epmsi)
        path = self.mktemp()
        write_random_file(path, 1000)
        code, out, err = await run_epop(
            self.config_path, "--lang", "en", "send", path, "--direct", "--proxy", proxy,
            "--epmsi", epmsi, "--ca-file", self.sandbox.ca_path,
        )
        self.assertEqual(code, _EXIT_FAILED, err)
        self.assertIn(
            f"the proxy refused the tunnel (502 Bad Gateway): \"Could not reach 127.0.0.1:{port}", err
        )
        self.assertIn("nothing listens there", err)
        self.assertTrue(await poll_until(reactor, lambda: self.running.records("connection-closed")))


class SquidPagesTests(TestCase):
    """squid's refusals are HTML pages: not quoted, today's messages stay."""

    async def test_html_refusals_not_shown(self) -> None:
        sandbox = make_trustme_sandbox(self, reactor)
        port = sandbox.port.getHost().port
        squid = start_squid(self, allow_ports=[], forbid_ports=[port])
        cases = [
            (ProxyConfig(squid.host, squid.port, squid.user, squid.password), "proxy-forbidden", "forbids this destination"),
            (ProxyConfig(squid.host, squid.port), "proxy-auth-required", "demands a user name"),
        ]
        for proxy, cause, text in cases:
            report = await test_connection(
                reactor, epmsi=sandbox.url, ca_file=sandbox.ca_path, proxy=proxy
            )
            self.assertEqual(report.error.cause, cause)
            self.assertIn(text, report.error.message)
            for sign in (": \"", "<", "html", "squid"):
                self.assertNotIn(sign, report.error.message.lower())


class FakeProxy(Protocol):
    """Answers the CONNECT head with C{answer}, then what C{then} says."""

    def __init__(self, server: "FakeProxyServer") -> None:
        self.server = server
        self.request = b""

    def connectionMade(self) -> None:
        self.server.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.request += data
        if b"\r\n\r\n" not in self.request or self.server.answered(self):
            return
        self.transport.write(self.server.answer)
        if self.server.then == "close":
            self.transport.loseConnection()
        elif self.server.then == "flood":
            self.transport.registerProducer(_Flood(self.transport), True)

    def connectionLost(self, reason: Failure) -> None:
        self.server.lost.append(self)


class _Flood:
    """An endless body: 64 KiB of text each time the socket can take more."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.sent = 0
        self.paused = False
        reactor.callLater(0, self.resumeProducing)

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.transport.connected and self.sent < 64 * 1024 * 1024:
            self.transport.write(b"no " * 21845 + b"x")
            self.sent += 64 * 1024

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.paused = True


class FakeProxyServer:
    """A proxy on a real loopback socket that refuses every CONNECT its way."""

    def __init__(self, testcase: TestCase, answer: bytes, then: str = "stay") -> None:
        self.answer = answer
        self.then = then
        self.connections: list[FakeProxy] = []
        self.lost: list[FakeProxy] = []
        self._answered: set[int] = set()
        listening = reactor.listenTCP(0, Factory.forProtocol(lambda: FakeProxy(self)), interface="127.0.0.1")
        self.port = listening.getHost().port
        testcase.addCleanup(listening.stopListening)
        testcase.addCleanup(lambda: [c.transport.abortConnection() for c in self.connections])

    def answered(self, connection: FakeProxy) -> bool:
        if id(connection) in self._answered:
            return True
        self._answered.add(id(connection))
        return False


class FakeProxyTests(TestCase):
    """Odd refusal bodies over a real socket: bounded, escaped, or left unsaid."""

    async def refused(
        self,
        answer: bytes,
        then: str = "stay",
        user: str | None = None,
        timeout: float = 30,
        language: str | None = "fr",
    ) -> tuple[ProxyError, FakeProxyServer]:
        server = FakeProxyServer(self, answer, then)
        proxy = ProxyConfig("127.0.0.1", server.port, user, "pw" if user else None, language=language)
        endpoint = TunnelEndpoint(reactor, proxy, "www.epmsi.atih.sante.fr", 443, timeout)
        error = await self.assertFailure(endpoint.connect(Factory.forProtocol(Protocol)), ProxyError)
        return error, server

    async def test_accept_language(self) -> None:
        """The CONNECT asks for the workstation's language as a plain tag; for no other."""
        answer = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"
        _, server = await self.refused(answer)
        self.assertIn(b"\r\nAccept-Language: fr\r\n", server.connections[0].request)
        for language in (None, "fr-FR,fr;q=0.9\r\nX-Injected: 1"):
            _, server = await self.refused(answer, language=language)
            self.assertNotIn(b"Accept-Language", server.connections[0].request)
            self.assertNotIn(b"X-Injected", server.connections[0].request)

    async def test_control_characters_escaped(self) -> None:
        """Terminal escapes, bidi overrides and line breaks in the body are shown escaped, on one line."""
        body = "Refused\x1b[31m by \u202epolicy\r\n\r\n  see\tthe IT desk  \n".encode()
        error, server = await self.refused(
            b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        self.assertEqual(error.cause, "proxy-forbidden")
        self.assertEqual(
            error.message,
            "Could not reach e-PMSI through the proxy 127.0.0.1:%d: the proxy refused the tunnel "
            "(403 Forbidden): \"Refused\\x1b[31m by \\u202epolicy see\\tthe IT desk\"" % server.port,
        )

    async def test_html_body_not_shown(self) -> None:
        """An HTML page is no sentence to quote: the status's meaning is shown instead."""
        body = b"<html><body>Access denied</body></html>"
        error, _ = await self.refused(
            b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n"
            % len(body) + body
        )
        self.assertIn("the proxy forbids this destination (403 Forbidden). Ask the IT", error.message)
        self.assertNotIn("Access denied", error.message)

    async def test_declared_huge_body_not_read(self) -> None:
        """A body announced over 4 KiB is not waited for: the refusal comes at once, without it."""
        error, server = await self.refused(
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\n"
            b"Content-Length: %d\r\n\r\nnever sent" % (MAX_BODY + 1)
        )
        self.assertEqual(error.cause, "proxy-error")
        self.assertIn("the proxy refused the tunnel (502 Bad Gateway).", error.message)
        self.assertNotIn("never sent", error.message)

    async def test_endless_body_cut(self) -> None:
        """A body that never ends: its first words are shown, cut, and the client hangs up."""
        error, server = await self.refused(
            b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\n\r\n", then="flood"
        )
        self.assertIn("(403 Forbidden): \"no no no", error.message)
        words = error.message.split("\"", 1)[1]
        self.assertEqual(len(words), MAX_SHOWN + len("…\""))
        self.assertTrue(words.endswith("…\""))
        self.assertTrue(await poll_until(reactor, lambda: server.lost))

    async def test_slow_body(self) -> None:
        """A body slower than the timeout: the refusal is still named, without the words."""
        error, _ = await self.refused(
            b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\nThe first",
            timeout=1,
        )
        self.assertEqual(error.cause, "proxy-forbidden")
        self.assertIn("forbids this destination (403 Forbidden)", error.message)
        self.assertNotIn("The first", error.message)

    async def test_body_until_close(self) -> None:
        """Without Content-Length, the body runs until the proxy closes."""
        error, _ = await self.refused(
            b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n\r\nUpstream down.\n",
            then="close",
        )
        self.assertEqual(error.cause, "proxy-error")
        self.assertIn("(503 Service Unavailable): \"Upstream down.\"", error.message)

    async def test_body_cut_short(self) -> None:
        """A close before the announced length: a partial sentence is not quoted."""
        error, _ = await self.refused(
            b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 50\r\n\r\nYou may",
            then="close",
        )
        self.assertNotIn("You may", error.message)
        self.assertIn("forbids this destination", error.message)

    async def test_credentials_keep_advice(self) -> None:
        """A 407 keeps its cause and advice; the proxy's words come after them."""
        error, _ = await self.refused(
            b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=x\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 21\r\n\r\nWrong user, or locked",
            user="dim",
        )
        self.assertEqual(error.cause, "proxy-auth-rejected")
        self.assertIn(
            "rejected the user name 'dim' or its password (407 Proxy Authentication Required). "
            "Check both with the IT department. The proxy says: \"Wrong user, or locked\"",
            error.message,
        )
        self.assertIn(
            "Le proxy dit : « Wrong user, or locked »", error.render("fr")
        )


class ProxyWordsTests(SynchronousTestCase):
    """Which bodies are read, and how they are shown."""

    def test_body_to_read(self) -> None:
        head = b"HTTP/1.1 403 Forbidden\r\n"
        cases = [
            (b"Content-Type: text/plain\r\nContent-Length: 12", (12, True)),
            (b"content-type: TEXT/PLAIN; charset=utf-8\r\ncontent-length: 4096", (MAX_BODY, True)),
            (b"Content-Type: text/plain", (MAX_BODY, False)),
            (b"Content-Type: text/plain\r\nContent-Length: 4097", None),
            (b"Content-Type: text/plain\r\nContent-Length: -1", None),
            (b"Content-Type: text/plain\r\nTransfer-Encoding: chunked", None),
            (b"Content-Type: text/html\r\nContent-Length: 12", None),
            (b"Content-Length: 12", None),
        ]
        for fields, expected in cases:
            self.assertEqual(body_to_read(head + fields), expected, fields)

    def test_charsets(self) -> None:
        """The declared charset decodes; an unknown or non-text one falls back to UTF-8."""
        head = b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=%s"
        self.assertEqual(proxy_words(head % b"iso-8859-1", "Accès refusé".encode("latin-1")), "Accès refusé")
        self.assertEqual(proxy_words(head % b"base64", "Accès".encode()), "Accès")
        self.assertEqual(proxy_words(head % b"nonsense", "Accès".encode()), "Accès")
        self.assertIsNone(proxy_words(head % b"utf-8", b" \r\n\n "))
