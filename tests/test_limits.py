"""
Caps on connections served at once, in all and per client address, over
real loopback sockets.
"""

from __future__ import annotations

from typing import Any

import trustme
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import deferLater
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase

from epop.relay import service

from epop.relay import tap
from epop.relay.limits import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
    ConnectionLimits,
)
from epop.local_tls import RelayTLS
from epop.relay.service import RelaySettings
from epop.wire import FrameType
from tests.relaying import HELLO, RawClient, RunningRelay, start_relay
from tests.support import make_trustme_sandbox, poll_until


async def connect(
    testcase: TestCase, port: int, source: str = "127.0.0.1", tls_ca: bytes | None = None
) -> RawClient:
    endpoint: Any = TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=(source, 0))
    if tls_ca is not None:
        creator = optionsForClientTLS("127.0.0.1", trustRoot=Certificate.loadPEM(tls_ca))
        endpoint = wrapClientTLS(creator, endpoint)
    client = await connectProtocol(endpoint, RawClient())
    testcase.addCleanup(lambda: None if client.closed.called else client.transport.abortConnection())
    return client


async def hello(client: RawClient, prefix: bytes = b"") -> tuple[FrameType, dict[str, Any]]:
    client.transport.write(prefix + HELLO)
    frame = await client.next_frame()
    return frame.kind, frame.message()


class CapTests(TestCase):
    def setUp(self) -> None:
        self.sandbox = make_trustme_sandbox(self, reactor)

    def relay(self, **settings: Any) -> RunningRelay:
        return start_relay(self, reactor, self.sandbox.url, self.sandbox.ca_path, **settings)

    def closed_reasons(self, relay: RunningRelay) -> list[str]:
        return [r["reason"] for r in relay.records("connection-closed")]

    async def test_total_cap(self) -> None:
        """
        With the cap reached, the next client is told so and journaled; once
        one connection ends, the next one is served.
        """
        relay = self.relay(max_connections=2)
        first = await connect(self, relay.port)
        second = await connect(self, relay.port)
        self.assertEqual((await hello(first))[0], FrameType.WELCOME)
        self.assertEqual((await hello(second))[0], FrameType.WELCOME)
        third = await connect(self, relay.port)
        kind, message = await hello(third)
        self.assertEqual((kind, message["code"]), (FrameType.ERROR, "too-many-connections"))
        self.assertIn("already serving 2 connections", message["message"])
        await third.closed
        self.assertTrue(await poll_until(reactor, lambda: self.closed_reasons(relay) == ["too-many-connections"]))
        [closed] = relay.records("connection-closed")
        self.assertEqual(closed["bytes_in"], len(HELLO))
        self.assertEqual(len(relay.records("connection-opened")), 3)
        # The two served go on.
        self.assertEqual(first.frames[-1].kind, FrameType.WELCOME)
        self.assertFalse(first.closed.called or second.closed.called)
        first.transport.loseConnection()
        await first.closed
        self.assertTrue(await poll_until(reactor, lambda: len(self.closed_reasons(relay)) == 2))
        fourth = await connect(self, relay.port)
        self.assertEqual((await hello(fourth))[0], FrameType.WELCOME)
        limits = relay.service.limits_factory
        assert limits is not None
        self.assertEqual(limits.total, 2)

    async def test_per_client_cap(self) -> None:
        """One address over its cap is refused; another address is still served."""
        relay = self.relay(max_connections_per_client=2)
        for _ in range(2):
            client = await connect(self, relay.port, "127.0.0.1")
            self.assertEqual((await hello(client))[0], FrameType.WELCOME)
        over = await connect(self, relay.port, "127.0.0.1")
        kind, message = await hello(over)
        self.assertEqual((kind, message["code"]), (FrameType.ERROR, "too-many-connections-from-client"))
        self.assertIn("already serving 2 connections from 127.0.0.1", message["message"])
        other = await connect(self, relay.port, "127.0.0.2")
        self.assertEqual((await hello(other))[0], FrameType.WELCOME)
        self.assertTrue(await poll_until(reactor, lambda: len(self.closed_reasons(relay)) == 1))
        self.assertEqual(self.closed_reasons(relay), ["too-many-connections-from-client"])
        clients = [r["client"].split(":")[0] for r in relay.records("connection-opened")]
        self.assertEqual(sorted(clients), ["127.0.0.1"] * 3 + ["127.0.0.2"])

    async def test_counted_by_proxy_header(self) -> None:
        """Behind a load balancer, connections count under the workstation's address."""
        relay = self.relay(
            listen=("haproxy:tcp:0:interface=127.0.0.1",), max_connections_per_client=1
        )
        first = await connect(self, relay.port)
        kind, _ = await hello(first, b"PROXY TCP4 10.1.1.1 127.0.0.1 40000 3358\r\n")
        self.assertEqual(kind, FrameType.WELCOME)
        second = await connect(self, relay.port)
        kind, message = await hello(second, b"PROXY TCP4 10.1.1.1 127.0.0.1 40001 3358\r\n")
        self.assertEqual(message["code"], "too-many-connections-from-client")
        self.assertIn("10.1.1.1", message["message"])
        third = await connect(self, relay.port)
        kind, _ = await hello(third, b"PROXY TCP4 10.1.1.2 127.0.0.1 40002 3358\r\n")
        self.assertEqual(kind, FrameType.WELCOME)

    async def test_tls_refusal_is_readable(self) -> None:
        """Over a cap, a TLS client reads the refusal inside its TLS session."""
        ca = trustme.CA()
        issued = ca.issue_cert("127.0.0.1")
        cert, key = FilePath(self.mktemp()), FilePath(self.mktemp())
        cert.setContent(issued.cert_chain_pems[0].bytes())
        key.setContent(issued.private_key_pem.bytes())
        relay = self.relay(tls=RelayTLS(cert.path, key.path), max_connections=1)
        first = await connect(self, relay.port, tls_ca=ca.cert_pem.bytes())
        self.assertEqual((await hello(first))[0], FrameType.WELCOME)
        second = await connect(self, relay.port, tls_ca=ca.cert_pem.bytes())
        kind, message = await hello(second)
        self.assertEqual((kind, message["code"]), (FrameType.ERROR, "too-many-connections"))
        self.assertTrue(await poll_until(reactor, lambda: self.closed_reasons(relay) == ["too-many-connections"]))

    async def test_refused_by_allowlist_not_counted(self) -> None:
        """A client the allowlist refuses learns only that, and takes no place."""
        relay = self.relay(allow=("10.0.0.0/8",), max_connections=1)
        for _ in range(3):
            client = await connect(self, relay.port)
            kind, message = await hello(client)
            self.assertEqual(message["code"], "not-authorized")
        limits = relay.service.limits_factory
        assert limits is not None
        self.assertEqual(limits.total, 0)

    async def test_silent_connections_bounded(self) -> None:
        """
        Sockets that never send a byte are bounded apart from the caps: one
        more than the bound closes the oldest once it has been silent a
        while, and a workstation that speaks is still served.
        """
        self.patch(service, "MAX_SILENT_CONNECTIONS", 5)
        self.patch(service, "SILENT_GRACE", 0.2)
        relay = self.relay()
        served = relay.service.listeners[0].served
        silent = [await connect(self, relay.port) for _ in range(5)]
        self.assertTrue(await poll_until(reactor, lambda: len(served.waiting) == 5))
        await deferLater(reactor, 0.3, lambda: None)
        one_more = await connect(self, relay.port)
        oldest = silent[0]
        await oldest.closed
        [error] = oldest.messages(FrameType.ERROR)
        self.assertEqual(error["code"], "too-many-silent-connections")
        self.assertIn("5 connections that have sent nothing", error["message"])
        self.assertTrue(await poll_until(reactor, lambda: self.closed_reasons(relay) == ["too-many-silent-connections"]))
        self.assertFalse(any(client.closed.called for client in silent[1:]))
        self.assertEqual((await hello(one_more))[0], FrameType.WELCOME)

    async def test_burst_of_silent_connections(self) -> None:
        """
        When the silent ones all just connected (a burst), the newcomer is
        the one refused: none of those about to speak loses its place.
        """
        self.patch(service, "MAX_SILENT_CONNECTIONS", 5)
        self.patch(service, "SILENT_GRACE", 60.0)
        relay = self.relay()
        served = relay.service.listeners[0].served
        silent = [await connect(self, relay.port) for _ in range(5)]
        self.assertTrue(await poll_until(reactor, lambda: len(served.waiting) == 5))
        newcomer = await connect(self, relay.port)
        await newcomer.closed
        self.assertEqual(newcomer.messages(FrameType.ERROR)[0]["code"], "too-many-silent-connections")
        self.assertFalse(any(client.closed.called for client in silent))
        self.assertEqual((await hello(silent[0]))[0], FrameType.WELCOME)


class SettingsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """Room for a month-end rush of 200 uploads from behind one address."""
        settings = RelaySettings()
        self.assertEqual(settings.max_connections, DEFAULT_MAX_CONNECTIONS)
        self.assertEqual(settings.max_connections_per_client, DEFAULT_MAX_CONNECTIONS_PER_CLIENT)
        self.assertGreaterEqual(DEFAULT_MAX_CONNECTIONS_PER_CLIENT, 200)
        self.assertGreaterEqual(DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_CLIENT)

    def test_negative(self) -> None:
        """A negative limit is refused, naming the setting."""
        error = self.assertRaises(ValueError, ConnectionLimits, -1, 5)
        self.assertIn("max_connections", str(error))

    def test_options(self) -> None:
        """twistd epop takes both options, and refuses what is not a count."""
        options = tap.Options()
        options.parseOptions(
            ["--max-connections", "40", "--max-connections-per-client", "0", "--no-check",
             "--journal", self.mktemp()]
        )
        settings = options.settings()
        self.assertEqual((settings.max_connections, settings.max_connections_per_client), (40, 0))
        for value in ("-1", "ten", "2.5"):
            error = self.assertRaises(
                Exception, tap.Options().parseOptions, ["--max-connections", value]
            )
            self.assertEqual(
                str(error), f"--max-connections: expected a whole number of connections, not {value!r} (0: no limit)"
            )

    def test_settings_file(self) -> None:
        """The same keys in a --config file."""
        config = FilePath(self.mktemp())
        config.setContent(b"[epop]\nmax-connections = 12\nmax-connections-per-client = 3\n")
        options = tap.Options()
        options.parseOptions(["--config", config.path, "--no-check", "--journal", self.mktemp()])
        settings = options.settings()
        self.assertEqual((settings.max_connections, settings.max_connections_per_client), (12, 3))
