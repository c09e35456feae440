"""
Tests for L{epop.relay.service} and L{epop.relay.tap}: how the relay is wired, started
and stopped, and how twistd's options are checked.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from epop.relay import tap
from epop.journal.events import emit
from epop.testing import MemoryJournalWriter
from epop.relay.allowlist import AllowlistFactory
from epop.relay.limits import LimitsFactory
from epop.relay.session import SessionChoiceFactory
from epop.relay.protocol import RelayFactory
from epop.relay.network_interfaces import LocalAddress, local_addresses
from epop.relay.service import ListenError, RelaySettings, listen_at_once, make_relay_service


class WiringTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.writer = MemoryJournalWriter()
        self.service = make_relay_service(
            self.reactor,
            RelaySettings(
                listen=("tcp:3358", "tcp:4000:interface=127.0.0.1"), check_at_start=False
            ),
            journal_writer=lambda: self.writer,
        )

    def test_listens_on_each_endpoint(self) -> None:
        """Each --listen endpoint gets a port served by the one relay factory."""
        self.service.privilegedStartService()
        self.service.startService()
        ports = [(port, interface) for port, _, _, interface in self.reactor.tcpServers]
        self.assertEqual(ports, [(3358, ""), (4000, "127.0.0.1")])
        factories = {id(factory) for _, factory, _, _ in self.reactor.tcpServers}
        self.assertEqual(len(factories), 1)
        served = self.reactor.tcpServers[0][1]
        self.assertIsInstance(served, SessionChoiceFactory)
        self.assertIsInstance(served.wrapped, AllowlistFactory)
        self.assertIsInstance(served.wrapped.wrappedFactory, LimitsFactory)
        self.assertIsInstance(served.wrapped.wrappedFactory.wrappedFactory, RelayFactory)
        self.assertIs(served.gate.__self__, served.wrapped)  # the allowlist speaks first
        self.assertIsNone(served.tls)

    def test_journal_observer_lives_with_the_service(self) -> None:
        """The journal is written while the service runs, and closed when it stops."""
        self.assertEqual(self.writer.records, [])
        self.service.privilegedStartService()
        self.service.startService()
        self.assertEqual(
            [(r["type"], r["port"]) for r in self.writer.records],
            [("listening-opened", 3358), ("listening-opened", 4000)],
        )
        self.service.stopService()
        self.assertEqual(
            [r["type"] for r in self.writer.records][-2:], ["listening-closed", "listening-closed"]
        )
        self.assertTrue(self.writer.closed)
        before = len(self.writer.records)
        emit(Logger(), self.service.factory.relay_id, "connection-opened", "late")
        self.assertEqual(len(self.writer.records), before)

    def test_other_relays_events_are_not_journaled(self) -> None:
        """Two relays in one process keep separate journals."""
        self.service.startService()
        emit(Logger(), "another-relay", "connection-opened", "x")
        self.assertNotIn("connection-opened", [r["type"] for r in self.writer.records])

    def test_invalid_settings(self) -> None:
        """Settings that cannot work are refused when the service is built."""
        for changes in (
            {"listen": ("nonsense:1",)},
            {"epmsi": "http://epmsi.example"},
            {"ca_file": "/nonexistent/ca.pem"},
        ):
            self.assertRaises(
                ValueError, lambda: make_relay_service(self.reactor, RelaySettings(**changes))
            )


class PortInUseTests(TestCase):
    def setUp(self) -> None:
        taken = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        self.listen = f"tcp:{taken.getHost().port}:interface=127.0.0.1"

    def test_service_raises(self) -> None:
        """A port already in use is an error at start, not a silently dead relay."""
        service = make_relay_service(
            reactor,
            RelaySettings(listen=(self.listen,), check_at_start=False),
            journal_writer=MemoryJournalWriter,
        )
        error = self.assertRaises(ListenError, service.privilegedStartService)
        self.assertIn(self.listen, str(error))
        self.assertIn("already listening", str(error))

    def test_twistd_exits_with_one_line(self) -> None:
        """Under twistd, the same mistake ends the program with a clear line."""
        options = tap.Options()
        options.parseOptions(["--listen", self.listen, "--no-check", "--console", "none", "--journal", self.mktemp()])
        service = tap.makeService(options)
        error = self.assertRaises(SystemExit, service.privilegedStartService)
        # An Exception too, so that twistd tells a daemon's parent and removes the pid file.
        self.assertIsInstance(error, Exception)
        self.assertEqual(error.code, 1)
        self.assertTrue(str(error).startswith(f"cannot listen on {self.listen}"))


class AddressNotHereTests(TestCase):
    """
    C{--listen} on an address this machine does not have (192.0.2.77, of
    TEST-NET-1, is nobody's): the error lists the addresses it does have.
    """

    listen = "tcp:0:interface=192.0.2.77"

    def test_lists_given_addresses(self) -> None:
        """The addresses, as epop interfaces names them, on the same line."""
        loopback = LocalAddress("lo", "127.0.0.1", 4, loopback=True, link_local=False)
        error = self.assertRaises(
            ListenError,
            listen_at_once,
            serverFromString(reactor, self.listen),
            Factory.forProtocol(Protocol),
            self.listen,
            lambda: [loopback],
        )
        self.assertEqual(
            str(error),
            f"cannot listen on {self.listen}: {error.why}; "
            "this machine's addresses are: 127.0.0.1 (lo); see epop interfaces",
        )

    def test_no_addresses(self) -> None:
        """A machine without any address says so rather than an empty list."""
        error = ListenError(self.listen, "Cannot assign requested address", [])
        self.assertIn("this machine's addresses are: none; see epop interfaces", str(error))

    def test_relay_lists_this_machines_addresses(self) -> None:
        """The relay's own port: this machine's real addresses, one line."""
        service = make_relay_service(
            reactor,
            RelaySettings(listen=(self.listen,), check_at_start=False),
            journal_writer=MemoryJournalWriter,
        )
        error = self.assertRaises(ListenError, service.privilegedStartService)
        message = str(error)
        self.assertNotIn("\n", message)
        self.assertIn(f"cannot listen on {self.listen}: ", message)
        for address in local_addresses():
            self.assertIn(f"{address.address} ({address.interface})", message)
        self.assertIn("127.0.0.1 (", message)
        self.assertTrue(message.endswith("; see epop interfaces"), message)

    def test_other_errors_list_nothing(self) -> None:
        """Only an address the machine lacks lists addresses: a taken port does not."""
        error = ListenError(self.listen, "Address already in use")
        self.assertNotIn("addresses are", str(error))


class OptionsTests(SynchronousTestCase):
    def parse(self, *args: str) -> tap.Options:
        options = tap.Options()
        options.parseOptions(list(args))
        return options

    def test_defaults(self) -> None:
        """With no options: port 3358, the real e-PMSI, the system's trust."""
        settings = self.parse().settings()
        self.assertEqual(settings.listen, ("tcp:3358",))
        self.assertEqual(settings.epmsi, "https://www.epmsi.atih.sante.fr")
        self.assertIsNone(settings.ca_file)
        self.assertEqual(settings.journal, "epop-journal.jsonl")
        self.assertEqual(settings.idle_timeout, 120.0)

    def test_allow_repeatable(self) -> None:
        """--allow adds one address or network each time; none means everyone."""
        self.assertEqual(self.parse().settings().allow, ())
        settings = self.parse("--allow", "10.1.2.3", "--allow", "fd00::/8").settings()
        self.assertEqual(settings.allow, ("10.1.2.3", "fd00::/8"))

    def test_proxy_options(self) -> None:
        """--proxy with a user takes its password from a file or the environment, never the URL."""
        password = self.mktemp()
        with open(password, "w") as f:
            f.write("pw\n")
        proxy = self.parse(
            "--proxy", "http://proxy.chu.local:3128", "--proxy-user", "dim",
            "--proxy-password-file", password,
        ).settings().proxy
        self.assertEqual((proxy.host, proxy.port, proxy.user, proxy.password), ("proxy.chu.local", 3128, "dim", "pw"))
        self.patch(os, "environ", {"EPOP_PROXY_PASSWORD": "from-env"})
        self.assertEqual(self.parse("--proxy", "http://p:1", "--proxy-user", "u").settings().proxy.password, "from-env")
        self.patch(os, "environ", {"HTTPS_PROXY": "http://sys-proxy:8080"})
        self.assertEqual(self.parse("--proxy", "system").settings().proxy.host, "sys-proxy")
        self.patch(os, "environ", {"HTTPS_PROXY": "http://sys-proxy:8080", "NO_PROXY": ".atih.sante.fr"})
        self.assertIsNone(self.parse("--proxy", "system").settings().proxy)

    def test_proxy_usage_errors(self) -> None:
        """A proxy setting that cannot work is refused at start, saying why."""
        self.patch(os, "environ", {})
        for args, text in [
            (["--proxy", "http://u:pw@p:1"], "do not put the proxy password in the URL"),
            (["--proxy", "http://p:1", "--proxy-user", "u"], "needs a password"),
            (["--proxy", "socks5://p:1"], "only http://"),
            (["--proxy-user", "u"], "without a proxy"),
            (["--proxy", "http://p:1", "--proxy-password-file", "/nonexistent"], "cannot read"),
        ]:
            error = self.assertRaises(usage.UsageError, self.parse, *args)
            self.assertIn(text, str(error))

    def test_listen_repeatable(self) -> None:
        """--listen replaces the default and may be given several times."""
        settings = self.parse("--listen", "tcp:1", "--listen", "tcp:2").settings()
        self.assertEqual(settings.listen, ("tcp:1", "tcp:2"))

    def test_usage_errors(self) -> None:
        """Each bad option is a usage error that names it."""
        cases = [
            (["--listen", "nonsense:1"], "--listen nonsense:1"),
            (["--epmsi", "http://x"], "https://"),
            (["--epmsi", "https://x/path"], "without a path"),
            (["--ca-file", "/nonexistent.pem"], "cannot read CA file"),
            (["--idle-timeout", "0"], "--idle-timeout"),
            (["--journal", "/nonexistent/dir/j.jsonl"], "--journal"),
            (["--allow", "10.1.2.300"], "--allow: '10.1.2.300' is not an IP address"),
        ]
        for args, text in cases:
            error = self.assertRaises(usage.UsageError, self.parse, *args)
            self.assertIn(text, str(error))
