"""
The relay's PAC file and its page at C{/}: the PAC's text evaluated by a
real JavaScript engine (pypac's, dukpy), and both served by a real relay
on loopback (IPv4 and IPv6, behind a PROXY header, beside TLS, to a client
outside the allowlist, with tunnels off).
"""

from __future__ import annotations

import re
import socket
from typing import Any

import trustme
from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.endpoints import TCP6ClientEndpoint, connectProtocol
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from epop.local_tls import RelayTLS
from epop.relay.destinations import Destination
from epop.relay.info_page import info_page, page_for
from epop.relay.proxy_pac import pac_script, proxy_address, reached_address
from tests.relaying import _Collect, exchange, start_relay
from tests.support import poll_until


def find_proxy(script: str, url: str, host: str) -> str:
    """What C{FindProxyForURL(url, host)} answers, run by pypac's JavaScript engine (dukpy)."""
    from pypac.parser import PACFile

    return str(PACFile(script).find_proxy_for_url(url, host))


EPMSI = Destination("www.epmsi.atih.sante.fr", 443, typed=False)
SANDBOX = Destination("sandbox.example", 8443)
V6 = Destination("fd00::1", 443)


class PacScriptTests(SynchronousTestCase):
    """The PAC's decisions, evaluated."""

    def setUp(self) -> None:
        self.script = pac_script([EPMSI, SANDBOX, V6], "10.1.2.3", 3358)

    def decide(self, url: str, host: str) -> str:
        return find_proxy(self.script, url, host)

    def test_destinations_go_through_the_relay(self) -> None:
        relay = "PROXY 10.1.2.3:3358"
        self.assertEqual(self.decide("https://www.epmsi.atih.sante.fr/", "www.epmsi.atih.sante.fr"), relay)
        self.assertEqual(self.decide("https://www.epmsi.atih.sante.fr:443/", "www.epmsi.atih.sante.fr"), relay)
        self.assertEqual(
            self.decide("https://www.epmsi.atih.sante.fr/syriusUpload.do?x=1", "www.epmsi.atih.sante.fr"), relay
        )
        self.assertEqual(self.decide("https://sandbox.example:8443/", "sandbox.example"), relay)
        self.assertEqual(self.decide("https://[fd00::1]/", "fd00::1"), relay)
        self.assertEqual(self.decide("https://[fd00::1]:443/", "[fd00::1]"), relay)

    def test_case_and_trailing_dot(self) -> None:
        relay = "PROXY 10.1.2.3:3358"
        self.assertEqual(self.decide("https://WWW.EPMSI.atih.sante.fr/", "WWW.EPMSI.atih.sante.fr"), relay)
        self.assertEqual(self.decide("https://www.epmsi.atih.sante.fr./", "www.epmsi.atih.sante.fr."), relay)

    def test_everything_else_direct(self) -> None:
        for url, host in [
            ("http://www.epmsi.atih.sante.fr/", "www.epmsi.atih.sante.fr"),
            ("https://www.epmsi.atih.sante.fr:8443/", "www.epmsi.atih.sante.fr"),
            ("https://epmsi.atih.sante.fr/", "epmsi.atih.sante.fr"),
            ("https://www.epmsi.atih.sante.fr.example.org/", "www.epmsi.atih.sante.fr.example.org"),
            ("https://sandbox.example/", "sandbox.example"),
            ("https://sandbox.example:443/", "sandbox.example"),
            ("https://www.example.org/", "www.example.org"),
            ("https://[fd00::1]:8443/", "fd00::1"),
            ("ftp://www.epmsi.atih.sante.fr/", "www.epmsi.atih.sante.fr"),
            ("https://user@evil.example/", "evil.example"),
        ]:
            self.assertEqual(self.decide(url, host), "DIRECT", url)

    def test_port_in_the_user_part_is_not_the_port(self) -> None:
        """C{https://x:8443@host/} is host's port 443."""
        relay = "PROXY 10.1.2.3:3358"
        self.assertEqual(
            self.decide("https://a:8443@www.epmsi.atih.sante.fr/", "www.epmsi.atih.sante.fr"), relay
        )

    def test_no_dns_functions(self) -> None:
        """Nothing that stalls a workstation without DNS."""
        for name in ("dnsResolve", "isInNet", "myIpAddress", "isResolvable", "dnsDomainIs"):
            self.assertNotIn(name, self.script)

    def test_ipv6_relay(self) -> None:
        script = pac_script([EPMSI], "fd00::2", 3358)
        self.assertEqual(
            find_proxy(script, "https://www.epmsi.atih.sante.fr/", "www.epmsi.atih.sante.fr"),
            "PROXY [fd00::2]:3358",
        )

    def test_ipv4_mapped_relay(self) -> None:
        """A dual-stack listener's IPv4 client reached an IPv4 address, and is told so."""
        self.assertEqual(proxy_address("::ffff:10.1.2.3", 3358), "10.1.2.3:3358")

    def test_hostile_names_stay_strings(self) -> None:
        """A name with quotes or a script end cannot escape its string."""
        odd = Destination('a"b</script>\\c', 443)
        script = pac_script([odd], "10.1.2.3", 3358)
        self.assertNotIn("</script>", script)
        self.assertEqual(find_proxy(script, "https://x/", 'a"b</script>\\c'), "PROXY 10.1.2.3:3358")
        self.assertEqual(find_proxy(script, "https://x/", "a"), "DIRECT")

    def test_no_destinations(self) -> None:
        script = pac_script([], "10.1.2.3", 3358)
        self.assertEqual(find_proxy(script, "https://www.epmsi.atih.sante.fr/", "www.epmsi.atih.sante.fr"), "DIRECT")


class ReachedAddressTests(SynchronousTestCase):
    def test_local_address(self) -> None:
        self.assertEqual(reached_address(IPv4Address("TCP", "10.1.2.3", 3358), "x:1"), ("10.1.2.3", 3358))
        self.assertEqual(reached_address(IPv6Address("TCP", "fd00::2", 3358)), ("fd00::2", 3358))

    def test_unix_socket_uses_host_header(self) -> None:
        unix = UNIXAddress(b"/run/epop.sock")
        self.assertEqual(reached_address(unix, "relay.example:3358"), ("relay.example", 3358))
        self.assertEqual(reached_address(unix, "[fd00::2]:3358"), ("fd00::2", 3358))
        self.assertIsNone(reached_address(unix, ""))
        self.assertIsNone(reached_address(unix, "relay.example"))
        self.assertIsNone(reached_address(unix, 'a"b:3358'))


class InfoPageTests(SynchronousTestCase):
    def test_english(self) -> None:
        page = info_page([EPMSI, V6], "10.1.2.3", 3358, "en").decode("utf-8")
        self.assertIn('<html lang="en">', page)
        self.assertIn("e-POP relay for e-PMSI", page)
        self.assertIn("HTTPS proxy for e-PMSI, and for nothing else", page)
        self.assertIn("<code>www.epmsi.atih.sante.fr:443</code>", page)
        self.assertIn("<code>[fd00::1]:443</code>", page)
        self.assertIn("give the address 10.1.2.3 and the port 3358", page)
        self.assertIn('<a href="http://10.1.2.3:3358/proxy.pac">', page)

    def test_french(self) -> None:
        page = info_page([EPMSI], "fd00::2", 3358, "fr").decode("utf-8")
        self.assertIn('<html lang="fr">', page)
        self.assertIn("Relais e-POP pour e-PMSI", page)
        self.assertIn("http://[fd00::2]:3358/proxy.pac", page)
        self.assertNotIn("HTTPS proxy for e-PMSI", page)

    def test_escaped(self) -> None:
        page = info_page([Destination("<b>x</b>", 443)], "10.1.2.3", 3358, "en").decode("utf-8")
        self.assertNotIn("<b>", page)
        self.assertIn("&lt;b&gt;x&lt;/b&gt;:443", page)

    def test_paths(self) -> None:
        reached = ("10.1.2.3", 3358)
        self.assertEqual(page_for("/proxy.pac", [EPMSI], reached, "en").reason, "served-pac")  # type: ignore[union-attr]
        self.assertEqual(page_for("/wpad.dat?x", [EPMSI], reached, "en").reason, "served-pac")  # type: ignore[union-attr]
        self.assertEqual(page_for("/", [EPMSI], reached, "en").reason, "served-page")  # type: ignore[union-attr]
        for path in ("/index.html", "/PROXY.PAC", "/proxy.pac/", "//proxy.pac"):
            self.assertIsNone(page_for(path, [EPMSI], reached, "en"), path)


def split_answer(answer: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("ascii").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return lines[0], {k.lower(): v for k, v in headers.items()}, body


class ServedTests(TestCase):
    """A real relay serves the PAC and the page on its own port."""

    def setUp(self) -> None:
        self.relay = start_relay(self, reactor, "https://sandbox.example:8443", None)

    async def get(self, request: bytes, relay: Any = None) -> tuple[str, dict[str, str], bytes]:
        relay = relay or self.relay
        before = len(relay.records("connection-closed"))
        answer = await exchange(reactor, relay.port, request)
        self.assertTrue(await poll_until(reactor, lambda: len(relay.records("connection-closed")) > before))
        return split_answer(answer)

    def closed_reason(self, relay: Any = None) -> str:
        return str((relay or self.relay).records("connection-closed")[-1]["reason"])

    async def test_pac(self) -> None:
        status, headers, body = await self.get(b"GET /proxy.pac HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        self.assertEqual(status, "HTTP/1.1 200 OK")
        self.assertEqual(headers["content-type"], "application/x-ns-proxy-autoconfig")
        self.assertEqual(headers["content-length"], str(len(body)))
        self.assertEqual(headers["cache-control"], "max-age=300")
        self.assertEqual(headers["vary"], "Accept-Language")
        self.assertEqual(headers["connection"], "close")
        script = body.decode("ascii")
        self.assertEqual(
            find_proxy(script, "https://sandbox.example:8443/", "sandbox.example"),
            f"PROXY 127.0.0.1:{self.relay.port}",
        )
        self.assertEqual(find_proxy(script, "https://www.example.org/", "www.example.org"), "DIRECT")
        self.assertEqual(self.closed_reason(), "served-pac")
        self.assertEqual(self.relay.records("object-instantiated"), [])
        [closed] = self.relay.records("connection-closed")
        self.assertGreater(closed["bytes_out"], len(body))

    async def test_wpad(self) -> None:
        status, headers, body = await self.get(b"GET /wpad.dat HTTP/1.1\r\n\r\n")
        self.assertEqual((status, headers["content-type"]), ("HTTP/1.1 200 OK", "application/x-ns-proxy-autoconfig"))
        self.assertIn("FindProxyForURL", body.decode("ascii"))
        self.assertEqual(self.closed_reason(), "served-pac")

    async def test_head(self) -> None:
        """HEAD: the same headers, no body."""
        _, got, body = await self.get(b"GET /proxy.pac HTTP/1.1\r\n\r\n")
        relay = start_relay(self, reactor, "https://sandbox.example:8443", None)
        status, headers, nothing = await self.get(b"HEAD /proxy.pac HTTP/1.1\r\n\r\n", relay)
        self.assertEqual(status, "HTTP/1.1 200 OK")
        self.assertEqual(nothing, b"")
        self.assertEqual(headers["content-length"], str(len(body)))
        self.assertEqual(headers, got)
        self.assertEqual(self.closed_reason(relay), "served-pac")

    async def test_page_english(self) -> None:
        status, headers, body = await self.get(b"GET / HTTP/1.1\r\nAccept-Language: en-GB,fr;q=0.5\r\n\r\n")
        self.assertEqual(status, "HTTP/1.1 200 OK")
        self.assertEqual(headers["content-type"], "text/html; charset=utf-8")
        page = body.decode("utf-8")
        self.assertIn("<code>sandbox.example:8443</code>", page)
        self.assertIn(f"http://127.0.0.1:{self.relay.port}/proxy.pac", page)
        self.assertEqual(self.closed_reason(), "served-page")

    async def test_page_french(self) -> None:
        _, _, body = await self.get(b"GET / HTTP/1.1\r\nAccept-Language: fr-FR,fr;q=0.9,en;q=0.5\r\n\r\n")
        self.assertIn("Relais e-POP pour e-PMSI", body.decode("utf-8"))

    async def test_other_path_still_refused(self) -> None:
        status, _, body = await self.get(b"GET /index.html HTTP/1.1\r\n\r\n")
        self.assertEqual(status, "HTTP/1.1 405 Method Not Allowed")
        self.assertIn("use it as an HTTPS proxy (CONNECT)", body.decode("utf-8"))
        self.assertEqual(self.closed_reason(), "http-method-not-allowed")

    async def test_post_is_not_a_page(self) -> None:
        status, _, _ = await self.get(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(status, "HTTP/1.1 405 Method Not Allowed")

    async def test_no_tunnel(self) -> None:
        """With --no-tunnel the PAC is refused, saying why, rather than sending everything DIRECT."""
        relay = start_relay(self, reactor, "https://sandbox.example:8443", None, no_tunnel=True)
        for path in (b"/proxy.pac", b"/"):
            status, _, body = await self.get(b"GET " + path + b" HTTP/1.1\r\n\r\n", relay)
            self.assertEqual(status, "HTTP/1.1 403 Forbidden")
            self.assertIn("--no-tunnel", body.decode("utf-8"))
            self.assertEqual(self.closed_reason(relay), "tunnels-disabled")

    async def test_client_not_allowed(self) -> None:
        """The allowlist applies to the PAC as to a tunnel, in the client's language."""
        self.relay.service.set_allowlist(["10.9.9.9"])
        status, _, body = await self.get(
            b"GET /proxy.pac HTTP/1.1\r\nAccept-Language: fr\r\n\r\n"
        )
        self.assertEqual(status, "HTTP/1.1 403 Forbidden")
        self.assertIn("n'est pas autoris", body.decode("utf-8"))
        self.assertNotIn("FindProxyForURL", body.decode("utf-8"))
        self.assertEqual(self.closed_reason(), "not-authorized")

    async def test_beside_tls(self) -> None:
        """A relay with a certificate still answers a browser's plain http GET on the same port."""
        ca = trustme.CA()
        issued = ca.issue_cert("127.0.0.1")
        cert, key = self.mktemp(), self.mktemp()
        issued.cert_chain_pems[0].write_to_path(cert)
        issued.private_key_pem.write_to_path(key)
        relay = start_relay(
            self, reactor, "https://sandbox.example:8443", None, tls=RelayTLS(cert, key, require=True)
        )
        status, headers, _ = await self.get(b"GET /proxy.pac HTTP/1.1\r\n\r\n", relay)
        self.assertEqual((status, headers["content-type"]), ("HTTP/1.1 200 OK", "application/x-ns-proxy-autoconfig"))

    async def test_behind_load_balancer(self) -> None:
        """Behind a PROXY header, the PAC names the address the workstation reached: the header's destination."""
        relay = start_relay(
            self, reactor, "https://sandbox.example:8443", None, listen=("haproxy:tcp:0:interface=127.0.0.1",)
        )
        _, _, body = await self.get(
            b"PROXY TCP4 10.1.2.3 10.20.30.40 51234 3358\r\nGET /proxy.pac HTTP/1.1\r\n\r\n", relay
        )
        self.assertEqual(
            find_proxy(body.decode("ascii"), "https://sandbox.example:8443/", "sandbox.example"),
            "PROXY 10.20.30.40:3358",
        )
        [closed] = relay.records("connection-closed")
        self.assertEqual((closed["client"], closed["reason"]), ("10.1.2.3:51234", "served-pac"))

    async def test_ipv6(self) -> None:
        """A workstation that reached the relay over IPv6 is sent to its IPv6 address, in brackets."""
        if not socket.has_ipv6:
            raise SkipTest("no IPv6")
        try:
            probe = socket.socket(socket.AF_INET6)
            probe.bind(("::1", 0))
            probe.close()
        except OSError:
            raise SkipTest("no IPv6 loopback")
        relay = start_relay(self, reactor, "https://sandbox.example:8443", None, listen=("tcp6:0:interface=\\:\\:1",))
        protocol = _Collect(b"GET /proxy.pac HTTP/1.1\r\n\r\n")
        await connectProtocol(TCP6ClientEndpoint(reactor, "::1", relay.port), protocol)
        _, _, body = split_answer(await protocol.done)
        script = body.decode("ascii")
        self.assertTrue(re.search(r'"PROXY \[::1\]:\d+"', script), script)
        self.assertEqual(
            find_proxy(script, "https://sandbox.example:8443/", "sandbox.example"), f"PROXY [::1]:{relay.port}"
        )
