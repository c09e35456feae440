"""
A tunnel that cannot be opened says why, in the client's language: e-PMSI
refusing or silent, the hospital's proxy absent, silent, refusing the
relay's credentials or the destination.  Real squid with Basic auth for the
proxy's refusals; nothing reaches the destination in any of them.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from epop.epmsi.proxy import ProxyConfig
from tests.relaying import RunningRelay, exchange, start_relay
from tests.squid import start_squid
from tests.support import SilentServer, free_port, poll_until


def _connect(port: int, language: str) -> bytes:
    return (
        f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Accept-Language: {language}\r\n\r\n"
    ).encode()


class UpstreamFailureTests(TestCase):
    """Each failure: its status, its reason and cause journaled, its words."""

    def setUp(self) -> None:
        self.far = SilentServer(self, reactor)

    def relay(self, **settings: Any) -> RunningRelay:
        """A relay whose e-PMSI is the silent far server (the tunnel's one destination)."""
        settings.setdefault("connect_timeout", 1.0)
        return start_relay(self, reactor, f"https://127.0.0.1:{self.far.port}", None, **settings)

    async def failed(
        self, relay: RunningRelay, status: int, reason: str, cause: str, language: str = "en"
    ) -> str:
        answer = await exchange(reactor, relay.port, _connect(self.far.port, language))
        head, _, body = answer.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(f"HTTP/1.1 {status} ".encode()), answer)
        self.assertEqual(self.far.accepted, [])
        self.assertTrue(await poll_until(reactor, lambda: relay.records("connection-closed")))
        [closed] = relay.records("connection-closed")
        self.assertEqual((closed["reason"], closed["error"]), (reason, cause))
        [released] = relay.records("object-released")
        self.assertEqual((released["outcome"], released["reason"], released["error"]), ("failed", reason, cause))
        return body.decode("utf-8")

    async def test_proxy_not_listening(self) -> None:
        """--proxy where nothing listens: 502, naming the proxy and the refusal."""
        port = free_port()
        relay = self.relay(proxy=ProxyConfig("127.0.0.1", port))
        body = await self.failed(relay, 502, "tunnel-unreachable", "proxy-unreachable")
        self.assertIn(f"127.0.0.1:{port}", body)
        self.assertIn("refused the connection", body)

    async def test_proxy_silent(self) -> None:
        """A proxy that accepts and never answers the CONNECT: 504 after --connect-timeout, in French."""
        silent_proxy = SilentServer(self, reactor)
        relay = self.relay(proxy=ProxyConfig("127.0.0.1", silent_proxy.port), connect_timeout=0.5)
        body = await self.failed(relay, 504, "tunnel-timeout", "proxy-timeout", language="fr-FR,fr;q=0.9")
        self.assertEqual(len(silent_proxy.accepted), 1)
        self.assertIn(
            f"Impossible de joindre 127.0.0.1:{self.far.port} par le proxy 127.0.0.1:{silent_proxy.port}", body
        )

    async def test_proxy_rejects_credentials(self) -> None:
        """Squid refusing the relay's password (407): 502 that says so, never showing the password."""
        squid = start_squid(self, allow_ports=[self.far.port])
        relay = self.relay(proxy=ProxyConfig(squid.host, squid.port, squid.user, "not-the-password"))
        body = await self.failed(relay, 502, "tunnel-unreachable", "proxy-auth-rejected")
        self.assertIn(f"'{squid.user}'", body)
        self.assertIn("407", body)
        self.assertNotIn("not-the-password", body)
        self.assertNotIn("not-the-password", repr(relay.journal.records))

    async def test_proxy_rejects_credentials_in_french(self) -> None:
        squid = start_squid(self, allow_ports=[self.far.port])
        relay = self.relay(proxy=ProxyConfig(squid.host, squid.port, squid.user, "not-the-password"))
        body = await self.failed(relay, 502, "tunnel-unreachable", "proxy-auth-rejected", language="fr")
        self.assertIn(f"le proxy a refusé le nom d'utilisateur « {squid.user} »", body)

    async def test_proxy_needs_credentials(self) -> None:
        """No --proxy-user for a proxy that wants one: 502 asking for them."""
        squid = start_squid(self, allow_ports=[self.far.port])
        relay = self.relay(proxy=ProxyConfig(squid.host, squid.port))
        body = await self.failed(relay, 502, "tunnel-unreachable", "proxy-auth-required")
        self.assertIn("user name and password", body)

    async def test_proxy_forbids_destination(self) -> None:
        """Squid answering 403 for the destination: 502 saying the proxy forbids it."""
        squid = start_squid(self, allow_ports=[], forbid_ports=[self.far.port])
        relay = self.relay(proxy=ProxyConfig(squid.host, squid.port, squid.user, squid.password))
        body = await self.failed(relay, 502, "tunnel-unreachable", "proxy-forbidden")
        self.assertIn("forbids this destination (403", body)
