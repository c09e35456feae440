"""
HTTPS to e-PMSI through a real squid with Basic authentication, from the
relay and from a workstation in direct mode.

These tests start their own squid (see L{tests.squid}); without squid they
skip, unless C{EPOP_REQUIRE_SQUID=1} makes that a failure.
"""

from __future__ import annotations

import json

import trustme
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from epop.workstation.client import send_file, test_connection
from epop.epmsi.proxy import ProxyConfig
from epop.tuning import SEND_LIMIT
from tests.relaying import start_relay
from tests.squid import Squid, start_squid
from tests.support import connect_to_epmsi, make_trustme_sandbox, poll_until, socket_of, write_random_file


class ProxyTests(TestCase):
    def setUp(self) -> None:
        self.sandbox = make_trustme_sandbox(self, reactor)
        self.sandbox_port = self.sandbox.port.getHost().port

    def squid(self, **ports: list[int]) -> Squid:
        ports.setdefault("allow_ports", [self.sandbox_port])
        return start_squid(self, **ports)

    def proxy(self, squid: Squid, password: str | None = "right", user: str | None = "right") -> ProxyConfig:
        return ProxyConfig(
            squid.host,
            squid.port,
            squid.user if user == "right" else user,
            squid.password if password == "right" else password,
        )

    def tunnel_logged(self, squid: Squid) -> bool:
        needle = f"CONNECT 127.0.0.1:{self.sandbox_port} {squid.user}"
        return any("TCP_TUNNEL/200" in line and needle in line for line in squid.access_lines())

    async def test_relay_through_squid(self) -> None:
        """A file sent through the relay and squid arrives intact; squid logged the tunnel."""
        squid = self.squid()
        relay = start_relay(self, reactor, self.sandbox.url, self.sandbox.ca_path, proxy=self.proxy(squid))
        path = self.mktemp()
        sha = write_random_file(path, 8 * 1024 * 1024, seed=11)
        reply = await send_file(reactor, path, to="/syriusUpload.do", relay=relay.endpoint)
        self.assertEqual(reply.status, 200)
        self.assertEqual(json.loads(reply.body)["files"][0]["sha256"], sha)
        report = await test_connection(reactor, relay=relay.endpoint)
        self.assertTrue(report.ok, report.describe())
        self.assertIn(f"through the proxy 127.0.0.1:{squid.port}", report.describe())
        await relay.service.stopService()  # closes the pooled tunnel, so squid logs it
        self.assertTrue(await poll_until(reactor, lambda: self.tunnel_logged(squid)), squid.access_lines())

    async def test_tunnel_sends_large_writes(self) -> None:
        """Through squid's tunnel too, the socket hands the kernel up to SEND_LIMIT per send."""
        squid = self.squid()
        protocol = await connect_to_epmsi(self, reactor, self.sandbox, proxy=self.proxy(squid))
        self.assertEqual(socket_of(protocol.transport).SEND_LIMIT, SEND_LIMIT)
        self.assertEqual(socket_of(protocol.transport).getPeer().port, squid.port)

    async def test_direct_through_squid(self) -> None:
        """A workstation with Internet access sends through squid by itself."""
        squid = self.squid()
        path = self.mktemp()
        sha = write_random_file(path, 4 * 1024 * 1024, seed=12)
        reply = await send_file(
            reactor, path, to="/syriusUpload.do", epmsi=self.sandbox.url,
            ca_file=self.sandbox.ca_path, proxy=self.proxy(squid),
        )
        self.assertEqual(json.loads(reply.body)["files"][0]["sha256"], sha)
        self.assertTrue(await poll_until(reactor, lambda: self.tunnel_logged(squid)), squid.access_lines())

    async def test_refusals_are_named(self) -> None:
        """Wrong password, missing password and forbidden destination each say so, through the relay too."""
        squid = self.squid(forbid_ports=[self.sandbox_port + 1 if self.sandbox_port < 65535 else 1])
        cases = [
            (self.proxy(squid, password="wrong"), "proxy-auth-rejected", "rejected the user name"),
            (self.proxy(squid, user=None, password=None), "proxy-auth-required", "demands a user name"),
        ]
        for proxy, cause, text in cases:
            direct = await test_connection(
                reactor, epmsi=self.sandbox.url, ca_file=self.sandbox.ca_path, proxy=proxy
            )
            self.assertEqual((direct.failed_step, direct.error.cause), ("epmsi", cause))
            self.assertIn(text, direct.error.message)
            relay = start_relay(self, reactor, self.sandbox.url, self.sandbox.ca_path, proxy=proxy)
            through = await test_connection(reactor, relay=relay.endpoint)
            self.assertEqual((through.failed_step, through.error.cause), ("epmsi", cause))
            self.assertIn(text, through.error.message)
            await relay.service.stopService()

    async def test_forbidden_destination(self) -> None:
        """A destination squid forbids is reported as forbidden by the proxy."""
        squid = self.squid(allow_ports=[], forbid_ports=[self.sandbox_port])
        report = await test_connection(
            reactor, epmsi=self.sandbox.url, ca_file=self.sandbox.ca_path, proxy=self.proxy(squid)
        )
        self.assertEqual(report.error.cause, "proxy-forbidden")
        self.assertIn("forbids this destination", report.error.message)
        path = self.mktemp()
        write_random_file(path, 1024)
        relay = start_relay(self, reactor, self.sandbox.url, self.sandbox.ca_path, proxy=self.proxy(squid))
        error = await self.assertFailure(
            send_file(reactor, path, to="/syriusUpload.do", relay=relay.endpoint), Exception
        )
        self.assertEqual(getattr(error, "cause", None), "proxy-forbidden")
        self.assertEqual(self.sandbox.complete_files(), [])

    async def test_squid_down(self) -> None:
        """A proxy that is not running is reported as unreachable."""
        squid = self.squid()
        proxy = self.proxy(squid)
        squid.stop()
        report = await test_connection(
            reactor, epmsi=self.sandbox.url, ca_file=self.sandbox.ca_path, proxy=proxy
        )
        self.assertEqual(report.error.cause, "proxy-unreachable")
        self.assertIn(f"proxy 127.0.0.1:{squid.port}", report.error.message)

    async def test_certificate_behind_proxy(self) -> None:
        """A certificate that fails inside the tunnel is a TLS error that mentions the proxy."""
        squid = self.squid()
        other = self.mktemp()
        trustme.CA().cert_pem.write_to_path(other)
        report = await test_connection(
            reactor, epmsi=self.sandbox.url, ca_file=other, proxy=self.proxy(squid)
        )
        self.assertEqual(report.error.cause, "tls")
        self.assertIn("through the proxy", report.error.message)
        self.assertIn("--ca-file", report.error.message)
