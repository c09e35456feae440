"""
L{epop.relay.network_interfaces}: the local addresses the relay can listen on.

Formatting and sorting are tested on made-up adapters (built with
C{ifaddr}'s own classes, so their shape is the library's); the machine's
real interfaces are only asked for loopback, which every machine has.
"""

from __future__ import annotations

from typing import Any

from ifaddr import IP, Adapter
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from epop.addressing import DEFAULT_PORT
from epop.relay.network_interfaces import (
    LocalAddress,
    addresses_for_listen_host,
    local_addresses,
)


def _v6(address: str, scope: int = 0) -> tuple[str, int, int]:
    """How ifaddr gives an IPv6 address: (address, flowinfo, scope_id)."""
    return (address, 0, scope)


def _adapter(name: str, *ips: str | tuple[str, int, int], nice_name: str | None = None) -> Adapter:
    return Adapter(name, name, [IP(ip, 24 if isinstance(ip, str) else 64, nice_name or name) for ip in ips])


#: A typical Linux relay: loopback listed first, as Linux does.
MACHINE = [
    _adapter("lo", "127.0.0.1", _v6("::1")),
    _adapter("eth0", "10.1.2.3", _v6("fd00::3"), _v6("fe80::1", scope=2)),
    _adapter("eth1", _v6("2001:db8::7"), "192.168.5.9", "169.254.10.20"),
]


def _interface_bound(description: str) -> str:
    """The interface a listen string binds, read off a memory reactor."""
    memory = MemoryReactor()
    serverFromString(memory, description).listen(Factory.forProtocol(Protocol))
    [(_port, _, _, interface)] = memory.tcpServers
    return interface


class LocalAddressTests(SynchronousTestCase):
    def test_ipv4(self) -> None:
        a = LocalAddress("eth0", "10.1.2.3", 4, loopback=False, link_local=False)
        self.assertEqual(a.listen_string(), "tcp:3358:interface=10.1.2.3")
        self.assertEqual(a.listen_string(4000), "tcp:4000:interface=10.1.2.3")
        self.assertEqual(a.client_address(), "10.1.2.3:3358")
        self.assertEqual(a.client_address(4000), "10.1.2.3:4000")
        self.assertEqual(DEFAULT_PORT, 3358)

    def test_ipv6_colons_escaped(self) -> None:
        """Twisted's endpoint strings need the address's colons escaped."""
        a = LocalAddress("eth0", "fd00::3", 6, loopback=False, link_local=False)
        self.assertEqual(a.listen_string(), "tcp6:3358:interface=fd00\\:\\:3")
        self.assertEqual(a.client_address(), "[fd00::3]:3358")
        self.assertEqual(_interface_bound(a.listen_string()), "fd00::3")

    def test_ipv6_loopback(self) -> None:
        a = LocalAddress("lo", "::1", 6, loopback=True, link_local=False)
        self.assertEqual(a.listen_string(), "tcp6:3358:interface=\\:\\:1")
        self.assertEqual(_interface_bound(a.listen_string()), "::1")

    def test_link_local_zone(self) -> None:
        """
        A link-local address binds with its zone; workstations type it
        without (they need their own).
        """
        [a] = [a for a in local_addresses(MACHINE) if a.address.startswith("fe80")]
        self.assertEqual(a.address, "fe80::1%2")
        self.assertTrue(a.link_local)
        self.assertEqual(a.host, "fe80::1")
        self.assertEqual(a.listen_string(), "tcp6:3358:interface=fe80\\:\\:1%2")
        self.assertEqual(_interface_bound(a.listen_string()), "fe80::1%2")
        self.assertEqual(a.client_address(), "[fe80::1]:3358")

    def test_ipv4_listen_string_parses(self) -> None:
        a = LocalAddress("eth0", "10.1.2.3", 4, loopback=False, link_local=False)
        self.assertEqual(_interface_bound(a.listen_string()), "10.1.2.3")


class LocalAddressesTests(SynchronousTestCase):
    def test_sorted(self) -> None:
        """
        Non-loopback IPv4 first, then IPv6, loopback last; link-local after
        the others of its version; otherwise the system's order.
        """
        self.assertEqual(
            [(a.interface, a.address) for a in local_addresses(MACHINE)],
            [
                ("eth0", "10.1.2.3"),
                ("eth1", "192.168.5.9"),
                ("eth1", "169.254.10.20"),
                ("eth0", "fd00::3"),
                ("eth1", "2001:db8::7"),
                ("eth0", "fe80::1%2"),
                ("lo", "127.0.0.1"),
                ("lo", "::1"),
            ],
        )

    def test_flags(self) -> None:
        by_address = {a.address: a for a in local_addresses(MACHINE)}
        self.assertEqual(
            by_address["10.1.2.3"],
            LocalAddress("eth0", "10.1.2.3", 4, loopback=False, link_local=False),
        )
        self.assertEqual(
            by_address["::1"], LocalAddress("lo", "::1", 6, loopback=True, link_local=False)
        )
        self.assertTrue(by_address["169.254.10.20"].link_local)
        self.assertEqual(by_address["2001:db8::7"].version, 6)

    def test_windows_names(self) -> None:
        """
        On Windows an adapter's name is a GUID: the interface shown is the
        connection's name ("Ethernet"), which ifaddr gives per IP.
        """
        guid = "{846EE342-7039-11DE-9D20-806E6F6E6963}"
        [a] = local_addresses([_adapter(guid, "10.0.0.5", nice_name="Ethernet")])
        self.assertEqual(a.interface, "Ethernet")

    def test_duplicates_once(self) -> None:
        """An address seen on two adapters (an alias) is listed once."""
        found = local_addresses([_adapter("eth0", "10.1.2.3"), _adapter("eth0:1", "10.1.2.3")])
        self.assertEqual([a.address for a in found], ["10.1.2.3"])

    def test_no_adapters(self) -> None:
        self.assertEqual(local_addresses([]), [])

    def test_normalised(self) -> None:
        """Addresses are written the standard way (compressed IPv6)."""
        [a] = local_addresses([_adapter("eth0", _v6("FD00:0:0:0:0:0:0:3"))])
        self.assertEqual(a.address, "fd00::3")


class AddressesForListenHostTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.addresses = local_addresses(MACHINE)

    def test_specific_ipv4(self) -> None:
        self.assertEqual(
            addresses_for_listen_host("10.1.2.3", 3358, addresses=self.addresses),
            ["10.1.2.3:3358"],
        )

    def test_specific_ipv6(self) -> None:
        self.assertEqual(
            addresses_for_listen_host("fd00::3", 4000, addresses=self.addresses),
            ["[fd00::3]:4000"],
        )

    def test_ipv4_wildcard(self) -> None:
        """0.0.0.0 (and Twisted's "" for tcp:PORT): IPv4, not loopback nor link-local."""
        for host in ("0.0.0.0", ""):
            self.assertEqual(
                addresses_for_listen_host(host, 3358, addresses=self.addresses),
                ["10.1.2.3:3358", "192.168.5.9:3358"],
            )

    def test_ipv6_wildcard_dual_stack(self) -> None:
        self.assertEqual(
            addresses_for_listen_host("::", 3358, addresses=self.addresses, dual_stack=True),
            ["10.1.2.3:3358", "192.168.5.9:3358", "[fd00::3]:3358", "[2001:db8::7]:3358"],
        )

    def test_ipv6_wildcard_ipv6_only(self) -> None:
        self.assertEqual(
            addresses_for_listen_host("::", 3358, addresses=self.addresses, dual_stack=False),
            ["[fd00::3]:3358", "[2001:db8::7]:3358"],
        )

    def test_no_network(self) -> None:
        """Only loopback: nothing a workstation could type."""
        loopback_only = local_addresses([MACHINE[0]])
        self.assertEqual(addresses_for_listen_host("0.0.0.0", 3358, addresses=loopback_only), [])

    def test_real_machine_default(self) -> None:
        """Without addresses=, the machine's own are used; never loopback."""
        for text in addresses_for_listen_host("0.0.0.0", 3358):
            self.assertFalse(text.startswith("127."), text)


class RealMachineTests(TestCase):
    """The one test that asks this machine's interfaces: loopback."""

    def test_loopback_listens(self) -> Deferred[None]:
        found = local_addresses()
        [loopback] = [a for a in found if a.address == "127.0.0.1"]
        self.assertTrue(loopback.loopback)
        self.assertEqual(loopback.version, 4)
        self.assertEqual(found[-1].loopback, True)
        description = loopback.listen_string(0)
        self.assertEqual(description, "tcp:0:interface=127.0.0.1")

        d = serverFromString(reactor, description).listen(Factory.forProtocol(Protocol))

        def listening(port: Any) -> None:
            self.addCleanup(port.stopListening)
            host = port.getHost()
            self.assertEqual(host.host, "127.0.0.1")
            self.assertNotEqual(host.port, 0)

        return d.addCallback(listening)

    def test_every_listen_string_parses(self) -> None:
        """Whatever this machine has, each listen string is a valid endpoint."""
        for a in local_addresses():
            self.assertEqual(_interface_bound(a.listen_string()), a.address)
