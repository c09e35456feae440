"""Tests for L{epop.relay.allowlist}: who may connect, and what the others are told."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from epop.relay.allowlist import Allowlist
from epop.workstation.client import test_connection
from tests.relaying import start_relay
from tests.support import make_trustme_sandbox, poll_until


class AllowlistTests(SynchronousTestCase):
    def test_addresses_and_networks(self) -> None:
        """Single addresses and CIDR networks, IPv4 and IPv6, match as expected."""
        allowlist = Allowlist(["10.1.2.3", "192.168.0.0/16", "fd00::/8", "::1"])
        for host in ("10.1.2.3", "192.168.44.5", "fd12::7", "::1"):
            self.assertTrue(allowlist.allows(host), host)
        for host in ("10.1.2.4", "192.169.0.1", "fe80::1", "127.0.0.1", "not-an-ip"):
            self.assertFalse(allowlist.allows(host), host)

    def test_ipv4_mapped_peer(self) -> None:
        """A peer seen as ::ffff:10.1.2.3 on a dual-stack socket matches IPv4 rules."""
        self.assertTrue(Allowlist(["10.1.0.0/16"]).allows("::ffff:10.1.2.3"))
        self.assertFalse(Allowlist(["10.1.0.0/16"]).allows("::ffff:10.2.2.3"))

    def test_empty_means_everyone(self) -> None:
        """No entries is the manual's "Tous": the list is falsy and not applied."""
        self.assertFalse(Allowlist([]))

    def test_bad_entry(self) -> None:
        """A bad entry is refused with its text in the message."""
        error = self.assertRaises(ValueError, Allowlist, ["10.1.2.300"])
        self.assertIn("10.1.2.300", str(error))


class RefusalTests(TestCase):
    async def test_refused_client_is_told_and_journaled(self) -> None:
        """A client outside the list gets the manual's message, and the relay journals it."""
        sandbox = make_trustme_sandbox(self, reactor)
        relay = start_relay(self, reactor, sandbox.url, sandbox.ca_path, allow=("10.0.0.0/8",))
        report = await test_connection(reactor, relay=relay.endpoint)
        self.assertEqual(report.failed_step, "relay")
        self.assertEqual(report.error.code, "not-authorized")
        self.assertRegex(
            report.error.message,
            r"^Client 127\.0\.0\.1:\d+ is not allowed to connect to this e-POP relay$",
        )
        self.assertTrue(await poll_until(reactor, lambda: "connection-closed" in relay.types()))
        self.assertEqual(relay.types(), ["listening-opened", "connection-opened", "connection-closed"])
        self.assertEqual(relay.records("connection-closed")[0]["reason"], "not-authorized")
        # Its HELLO was not read, but it arrived.
        self.assertGreater(relay.records("connection-closed")[0]["bytes_in"], 0)

    async def test_listed_client_is_served(self) -> None:
        """A client inside the list is served as usual."""
        sandbox = make_trustme_sandbox(self, reactor)
        relay = start_relay(self, reactor, sandbox.url, sandbox.ca_path, allow=("127.0.0.0/8",))
        report = await test_connection(reactor, relay=relay.endpoint)
        self.assertTrue(report.ok, report.describe())


def _proxy_v2(source: str, port: int) -> bytes:
    """A PROXY protocol version 2 header for a TCP over IPv4 connection."""
    import ipaddress
    import struct

    body = (
        ipaddress.IPv4Address(source).packed
        + ipaddress.IPv4Address("127.0.0.1").packed
        + struct.pack(">HH", port, 3358)
    )
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack(">H", len(body)) + body


class BehindLoadBalancerTests(TestCase):
    """With --listen haproxy:..., the allowlist and journal see the real client."""

    def setUp(self) -> None:
        self.sandbox = make_trustme_sandbox(self, reactor)
        self.relay = start_relay(
            self,
            reactor,
            self.sandbox.url,
            self.sandbox.ca_path,
            listen=("haproxy:tcp:0:interface=127.0.0.1",),
            allow=("10.0.0.0/8",),
        )

    async def exchange(self, header: bytes) -> list:
        from tests.relaying import HELLO, raw_connect

        client = await raw_connect(self, reactor, self.relay.port)
        client.transport.write(header + HELLO)
        frame = await client.next_frame()
        return [frame.kind, frame.message()]

    async def test_v1_allowed(self) -> None:
        """A PROXY v1 header naming an allowed client is served and journaled as that client."""
        from epop.wire import FrameType

        kind, _ = await self.exchange(b"PROXY TCP4 10.1.2.3 127.0.0.1 51234 3358\r\n")
        self.assertEqual(kind, FrameType.WELCOME)
        self.assertEqual(self.relay.records("connection-opened")[0]["client"], "10.1.2.3:51234")

    async def test_v1_refused(self) -> None:
        """A PROXY v1 header naming another client gets the refusal with that client's address."""
        from epop.wire import FrameType

        kind, message = await self.exchange(b"PROXY TCP4 192.168.1.5 127.0.0.1 40000 3358\r\n")
        self.assertEqual(kind, FrameType.ERROR)
        self.assertEqual(message["code"], "not-authorized")
        self.assertIn("Client 192.168.1.5:40000 is not allowed", message["message"])
        self.assertTrue(await poll_until(reactor, lambda: "connection-closed" in self.relay.types()))
        self.assertEqual(self.relay.records("connection-closed")[0]["client"], "192.168.1.5:40000")

    async def test_v2(self) -> None:
        """The binary PROXY v2 header is understood the same way."""
        from epop.wire import FrameType

        kind, _ = await self.exchange(_proxy_v2("10.9.8.7", 50000))
        self.assertEqual(kind, FrameType.WELCOME)
        self.assertEqual(self.relay.records("connection-opened")[0]["client"], "10.9.8.7:50000")
        kind, message = await self.exchange(_proxy_v2("172.16.0.1", 50001))
        self.assertEqual(message["code"], "not-authorized")
