"""
Stopping and starting a running relay's listening, and changing its
settings in between (L{RelayService.stop_listening}, L{start_listening},
L{change_settings}): the original's "Arrêter l'écoute" and "Lancer
l'écoute", for the console and any other application.  Real sockets, the
real sandbox over HTTPS.
"""

from __future__ import annotations

import socket
from dataclasses import replace

from twisted.internet import reactor
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase

from epop.local_tls import RelayTLS
from epop.relay.service import RelayListening, StartRefused
from epop.workstation.client import RelayAddress, test_connection
from tests.relaying import HELLO, raw_connect, start_relay
from tests.support import free_port, make_trustme_sandbox


class ListeningControlTests(TestCase):
    def setUp(self) -> None:
        self.sandbox = make_trustme_sandbox(self, reactor)
        self.relay = start_relay(self, reactor, self.sandbox.url, self.sandbox.ca_path)
        self.service = self.relay.service
        self.changes: list[bool] = []
        self.addCleanup(self.service.watch(lambda: self.changes.append(self.service.listening)))

    async def assert_refused(self, port: int) -> None:
        """Nothing listens on C{port}: the connection is refused."""
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        with self.assertRaises(ConnectionRefusedError):
            await connectProtocol(endpoint, Protocol())

    async def assert_serves(self, port: int) -> None:
        report = await test_connection(reactor, relay=RelayAddress("127.0.0.1", port))
        self.assertTrue(report.ok, report.describe())

    async def test_stop_then_start(self) -> None:
        """
        Stopped, the port is closed and journaled so, while the service (and
        its journal) go on; started again, the relay checks e-PMSI, serves,
        and numbers its connections on from where it stopped.
        """
        port = self.relay.port
        await self.assert_serves(port)
        self.assertTrue(self.service.listening)
        self.assertEqual(self.service.listening_addresses(), [f"127.0.0.1:{port}"])

        await self.service.stop_listening()
        self.assertFalse(self.service.listening)
        self.assertTrue(self.service.running)
        self.assertEqual(self.service.listening_addresses(), [])
        await self.assert_refused(port)
        self.assertEqual(self.relay.types().count("listening-closed"), 1)

        self.service.change_settings(
            replace(self.service.settings, listen=(f"tcp:{port}:interface=127.0.0.1",))
        )
        check = await self.service.start_listening()
        self.assertTrue(check.ok, check.describe())
        self.assertTrue(self.service.listening)
        await self.assert_serves(port)
        opened = self.relay.records("connection-opened")
        self.assertEqual([r["connection"] for r in opened], [1, 2])
        self.assertEqual(self.relay.types().count("listening-opened"), 2)
        self.assertEqual(self.changes, [False, False, True])
        # A new allowlist (SIGHUP) reaches the watchers too: an open console shows it.
        self.service.set_allowlist(["127.0.0.1"], source="a test")
        self.assertEqual(self.changes, [False, False, True, True])

    async def test_stopping_twice_and_stopping_the_service(self) -> None:
        """A second stop does nothing; the service then stops without journaling a second close."""
        await self.service.stop_listening()
        await self.service.stop_listening()
        await self.service.stopService()
        self.assertEqual(self.relay.types().count("listening-closed"), 1)

    async def test_stop_closes_idle_connections(self) -> None:
        """An idle connection is closed by the stop, as when the relay stops."""
        client = await raw_connect(self, reactor, self.relay.port)
        client.transport.write(HELLO)
        await client.next_frame()
        await self.service.stop_listening()
        await client.closed
        closed = self.relay.records("connection-closed")
        self.assertEqual([r["reason"] for r in closed], ["relay-stopping"])

    async def test_settings_change_only_while_stopped(self) -> None:
        """A change while listening is refused and changes nothing; stopped, a new port and allowlist apply."""
        old_port = self.relay.port
        new_port = free_port()
        changed = replace(
            self.service.settings, listen=(f"tcp:{new_port}:interface=127.0.0.1",), allow=("10.0.0.0/8",)
        )
        self.assertRaises(RelayListening, self.service.change_settings, changed)
        await self.assert_serves(old_port)

        await self.service.stop_listening()
        self.service.change_settings(changed)
        self.assertFalse(self.service.listening)
        await self.service.start_listening()
        self.assertEqual(self.relay.port, new_port)
        await self.assert_refused(old_port)
        report = await test_connection(reactor, relay=RelayAddress("127.0.0.1", new_port))
        self.assertEqual(report.error.code, "not-authorized")
        self.assertEqual(self.service.settings.allow, ("10.0.0.0/8",))

    async def test_start_while_listening_is_refused(self) -> None:
        with self.assertRaises(RelayListening):
            await self.service.start_listening()
        await self.service.stop_listening()
        starting = self.service.start_listening()
        with self.assertRaises(RelayListening):
            await self.service.start_listening()
        self.assertRaises(RelayListening, self.service.change_settings, self.service.settings)
        await starting
        self.assertTrue(self.service.listening)

    async def test_stop_asked_during_a_start_waits_for_it(self) -> None:
        """A stop asked while a start checks e-PMSI stops the relay once the start is done."""
        await self.service.stop_listening()
        starting = self.service.start_listening()
        stopping = self.service.stop_listening()
        await starting
        await stopping
        self.assertFalse(self.service.listening)

    async def test_epmsi_unreachable_refuses_to_start(self) -> None:
        """
        When e-PMSI cannot be reached the start is refused with the check,
        and nothing listens; unless the caller starts anyway.
        """
        port = self.relay.port
        await self.service.stop_listening()
        unreachable = f"https://127.0.0.1:{free_port()}"
        self.service.change_settings(
            replace(self.service.settings, epmsi=unreachable, listen=(f"tcp:{port}:interface=127.0.0.1",))
        )
        with self.assertRaises(StartRefused) as refused:
            await self.service.start_listening()
        self.assertFalse(refused.exception.check.ok)
        self.assertEqual(refused.exception.check.error.code, "epmsi-unreachable")
        self.assertIn(unreachable, str(refused.exception))
        self.assertFalse(self.service.listening)
        await self.assert_refused(port)
        self.assertEqual(self.relay.types().count("listening-opened"), 1)

        check = await self.service.start_listening(require_epmsi=False)
        self.assertFalse(check.ok)
        self.assertTrue(self.service.listening)

    async def test_port_in_use_refuses_to_start_and_frees_the_others(self) -> None:
        """
        A port another program holds refuses the start, naming it; the
        ports already opened for the same start are closed again.
        """
        await self.service.stop_listening()
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        free = free_port()
        self.service.change_settings(
            replace(
                self.service.settings,
                listen=(f"tcp:{free}:interface=127.0.0.1", f"tcp:{busy}:interface=127.0.0.1"),
            )
        )
        with self.assertRaises(StartRefused) as refused:
            await self.service.start_listening()
        self.assertIn(f"tcp:{busy}:interface=127.0.0.1", str(refused.exception))
        self.assertIn("in use", str(refused.exception))
        self.assertTrue(refused.exception.check.ok)
        self.assertFalse(self.service.listening)
        await self.assert_refused(free)

    async def test_epmsi_test_uses_the_settings_in_force(self) -> None:
        """While stopped, the e-PMSI test reaches the e-PMSI of the changed settings."""
        await self.service.stop_listening()
        check = await self.service.test_epmsi()
        self.assertTrue(check.ok, check.describe())
        unreachable = f"https://127.0.0.1:{free_port()}"
        self.service.change_settings(replace(self.service.settings, epmsi=unreachable))
        check = await self.service.test_epmsi()
        self.assertFalse(check.ok)
        self.assertEqual(check.url, unreachable)

    async def test_bad_tls_settings_change_nothing(self) -> None:
        """A change whose TLS files cannot be used raises, and the old settings stay."""
        await self.service.stop_listening()
        before = self.service.settings
        missing = self.mktemp()
        bad = replace(before, tls=RelayTLS(missing, missing))
        self.assertRaises(ValueError, self.service.change_settings, bad)
        self.assertIs(self.service.settings, before)


class ListenAtStartTests(TestCase):
    """A relay set not to listen at start (the original's "Lancer l'écoute à l'exécution" unticked)."""

    async def test_waits_for_start_listening(self) -> None:
        sandbox = make_trustme_sandbox(self, reactor)
        port = free_port()
        relay = start_relay(
            self, reactor, sandbox.url, sandbox.ca_path,
            listen=(f"tcp:{port}:interface=127.0.0.1",), listen_at_start=False, check_at_start=True,
        )
        self.assertFalse(relay.service.listening)
        self.assertIsNone(relay.service.startup_check)
        self.assertNotIn("listening-opened", relay.types())
        with self.assertRaises(ConnectionRefusedError):
            await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Protocol())
        await relay.service.start_listening()
        report = await test_connection(reactor, relay=RelayAddress("127.0.0.1", port))
        self.assertTrue(report.ok, report.describe())

