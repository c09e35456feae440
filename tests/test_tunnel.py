"""
The relay as an HTTPS proxy for e-PMSI (HTTP CONNECT on the e-POP port):
real curl, a real workstation in direct mode and a real squid through a
real relay to the real sandbox, and every refusal with its status, its
message and nothing forwarded.
"""

from __future__ import annotations

import json
import os
from datetime import timezone

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from epop.epmsi.proxy import ProxyConfig
from epop.journal.connections import connection_summaries
from epop.journal.table import journal_table, outcome_label
from epop.workstation.client import send_file
from tests.relaying import exchange, start_relay
from tests.squid import start_squid
from tests.support import SilentServer, make_trustme_sandbox, poll_until, write_random_file


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def body_of(answer: bytes) -> str:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"Connection: close" in head and b"text/plain; charset=utf-8" in head, head
    return body.decode("utf-8")


class CurlTests(TestCase):
    """Real clients reach the sandbox through the relay's tunnel."""

    def setUp(self) -> None:
        self.sandbox = make_trustme_sandbox(self, reactor)
        self.relay = start_relay(self, reactor, self.sandbox.url, self.sandbox.ca_path)
        self.path = self.mktemp()
        self.sha = write_random_file(self.path, 3 * 1024 * 1024 + 17, seed=5)

    async def test_curl_upload(self) -> None:
        """curl -x sends a file to the sandbox; the receipt's SHA-256 is the file's; journaled."""
        out, err, code = await getProcessOutputAndValue(
            "curl",
            [
                "-sS", "--max-time", "60",
                "-x", f"http://127.0.0.1:{self.relay.port}",
                "--cacert", self.sandbox.ca_path,
                "-F", f"theFile=@{self.path}",
                f"{self.sandbox.url}/syriusUpload.do",
            ],
            env=dict(os.environ, no_proxy="", NO_PROXY=""),
        )
        self.assertEqual(code, 0, err)
        receipt = json.loads(out)
        self.assertEqual(receipt["files"][0]["sha256"], self.sha)
        self.assertTrue(await poll_until(reactor, lambda: self.relay.records("connection-closed")))
        [made] = self.relay.records("object-instantiated")
        self.assertEqual((made["kind"], made["destination"]), ("tunnel", self.sandbox.url[8:]))
        [released] = self.relay.records("object-released")
        self.assertEqual(released["destination_address"], "127.0.0.1")
        self.assertEqual(released["outcome"], "completed")
        self.assertGreater(released["bytes_in"], 3 * 1024 * 1024)
        self.assertGreater(released["bytes_out"], 0)
        [closed] = self.relay.records("connection-closed")
        self.assertIn(closed["reason"], ("closed-by-client", "closed-by-destination"))
        self.assertEqual(closed["destination"], made["destination"])
        # epop journal and epop connections show it.
        table = "\n".join(journal_table(self.relay.journal.records, "en", timezone.utc))
        self.assertIn(f"Instantiated object: tunnel to {made['destination']}", table)
        self.assertIn(f"Released object: tunnel to {made['destination']} (127.0.0.1): completed", table)
        self.assertIn(f", to {made['destination']}, {closed['reason']}; ", table)
        [summary] = connection_summaries(self.relay.journal.records, 0)
        self.assertEqual((summary.state, summary.operations), ("closed", 1))

    async def send_through(self, relay_port: int) -> None:
        """epop send --direct --proxy http://127.0.0.1:RELAY_PORT: the file arrives whole."""
        reply = await send_file(
            reactor, self.path, to="/syriusUpload.do", field="theFile", epmsi=self.sandbox.url,
            ca_file=self.sandbox.ca_path, proxy=ProxyConfig("127.0.0.1", relay_port),
        )
        self.assertEqual(reply.status, 200)
        self.assertEqual(json.loads(reply.body)["files"][0]["sha256"], self.sha)

    async def test_epop_send_direct_through_relay(self) -> None:
        """epop send --direct --proxy http://RELAY works unchanged."""
        await self.send_through(self.relay.port)

    async def test_treq_through_relay(self) -> None:
        """treq on epop's e-PMSI leg, as docs/applications.md shows it."""
        import treq
        from twisted.internet.ssl import Certificate
        from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

        from epop.epmsi.upstream import EpmsiEndpointFactory

        policy = BrowserLikePolicyForHTTPS(Certificate.loadPEM(self.sandbox.ca.cert_pem.bytes()))
        agent = Agent.usingEndpointFactory(
            reactor,
            EpmsiEndpointFactory(reactor, policy, proxy=ProxyConfig("127.0.0.1", self.relay.port)),
            pool=HTTPConnectionPool(reactor, persistent=False),
        )
        with open(self.path, "rb") as file:
            response = await treq.post(
                f"{self.sandbox.url}/syriusUpload.do", files={"theFile": file}, agent=agent
            )
            receipt = await response.json()
        self.assertEqual(receipt["files"][0]["sha256"], self.sha)

    async def test_relay_through_squid(self) -> None:
        """The relay's own leg goes through squid with Basic credentials."""
        sandbox_port = self.sandbox.port.getHost().port
        squid = start_squid(self, allow_ports=[sandbox_port])
        relay = start_relay(
            self, reactor, self.sandbox.url, self.sandbox.ca_path,
            proxy=ProxyConfig(squid.host, squid.port, squid.user, squid.password),
        )
        await self.send_through(relay.port)
        needle = f"CONNECT 127.0.0.1:{sandbox_port} {squid.user}"
        self.assertTrue(
            await poll_until(reactor, lambda: any(needle in line for line in squid.access_lines())),
            squid.access_lines(),
        )


class RefusalTests(TestCase):
    """Each refusal: its status, its message, and no connection to anywhere."""

    def setUp(self) -> None:
        self.far = SilentServer(self, reactor)
        self.relay = start_relay(
            self, reactor, "https://127.0.0.1:1", None,
            tunnel_to=(f"localhost:{self.far.port}",), hello_timeout=0.5,
        )

    async def refused(self, request: bytes, status: int, reason: str) -> str:
        answer = await exchange(reactor, self.relay.port, request)
        self.assertEqual(status_of(answer), status, answer)
        self.assertEqual(self.far.accepted, [])
        self.assertTrue(await poll_until(reactor, lambda: self.relay.records("connection-closed")))
        [closed] = self.relay.records("connection-closed")
        self.assertEqual(closed["reason"], reason)
        return body_of(answer)

    def asked(self, destination: str | None) -> dict:
        """The connection-closed record names what the client asked for, as do the journal's views."""
        [closed] = self.relay.records("connection-closed")
        self.assertEqual(closed.get("destination"), destination)
        english = journal_table(self.relay.journal.records, "en", timezone.utc)[-1]
        french = journal_table(self.relay.journal.records, "fr", timezone.utc)[-1]
        if destination is None:
            self.assertNotIn(" to ", closed["description"])
            self.assertNotIn(", to ", english)
            return closed
        self.assertIn(f" to {destination} closed: {closed['reason']}", closed["description"])
        self.assertIn(f"Connection id: {closed['connection']}, to {destination}, {closed['reason']}; ", english)
        label = outcome_label(closed["reason"]).render("fr")
        self.assertIn(f"Id de connexion : {closed['connection']}, vers {destination}, {label} ; ", french)
        return closed

    async def test_host_not_listed(self) -> None:
        body = await self.refused(b"CONNECT WWW.Example.org.:443 HTTP/1.1\r\n\r\n", 403, "destination-not-allowed")
        self.assertIn("www.example.org:443 is not a destination", body)
        self.assertIn(f"localhost:{self.far.port}", body)
        closed = self.asked("www.example.org:443")
        self.assertRegex(
            closed["description"],
            r"^Connection 1 from 127\.0\.0\.1:\d+ to www\.example\.org:443 closed: destination-not-allowed$",
        )

    async def test_ip_literal_not_listed(self) -> None:
        """localhost is listed, 127.0.0.1 is not: no tunnel."""
        await self.refused(f"CONNECT 127.0.0.1:{self.far.port} HTTP/1.1\r\n\r\n".encode(), 403, "destination-not-allowed")
        self.asked(f"127.0.0.1:{self.far.port}")

    async def test_ipv6_literal_not_listed(self) -> None:
        await self.refused(b"CONNECT [::1]:443 HTTP/1.1\r\n\r\n", 403, "destination-not-allowed")
        self.asked("[::1]:443")

    async def test_other_port(self) -> None:
        await self.refused(b"CONNECT localhost:22 HTTP/1.1\r\n\r\n", 403, "destination-not-allowed")
        self.asked("localhost:22")

    async def test_destination_escaped_and_bounded(self) -> None:
        """A CONNECT host with bytes a terminal acts on (a C1 CSI), and a long one: escaped, cut at 255."""
        await self.refused(b"CONNECT \x9b2Jevil\xe9\\x.example:443 HTTP/1.1\r\n\r\n", 403, "destination-not-allowed")
        closed = self.asked("\\x9b2jevil\\xe9\\\\x.example:443")
        self.assertNotIn("\x9b", closed["description"])
        self.relay = start_relay(self, reactor, "https://127.0.0.1:1", None, tunnel_to=(f"localhost:{self.far.port}",))
        await self.refused(b"CONNECT " + b"a" * 5000 + b".example:443 HTTP/1.1\r\n\r\n", 403, "destination-not-allowed")
        [closed] = self.relay.records("connection-closed")
        self.assertEqual(closed["destination"], "a" * 255 + "...")

    async def test_bad_connect_names_nothing(self) -> None:
        """A CONNECT without a port asked for no destination the relay could name."""
        await self.refused(b"CONNECT localhost HTTP/1.1\r\n\r\n", 400, "http-bad-request")
        self.asked(None)

    async def test_plain_proxy_request(self) -> None:
        body = await self.refused(b"GET http://www.example.org/ HTTP/1.1\r\nHost: x\r\n\r\n", 403, "not-a-tunnel")
        self.assertIn("This relay does not fetch web pages. This relay only opens HTTPS tunnels to e-PMSI:", body)
        self.asked("www.example.org:80")

    async def test_plain_proxy_request_url_parts_kept_out(self) -> None:
        """The URL's host and port only: never its user, password, path or query."""
        request = b"POST https://bob:s3cret@Portal.Example:8443/login?token=t0ken HTTP/1.1\r\nHost: x\r\n\r\n"
        await self.refused(request, 403, "not-a-tunnel")
        self.asked("portal.example:8443")
        for secret in ("bob", "s3cret", "login", "t0ken"):
            self.assertNotIn(secret, json.dumps(self.relay.journal.records))

    async def test_other_method_names_nothing(self) -> None:
        await self.refused(b"GET /index.html HTTP/1.1\r\nHost: www.example.org\r\n\r\n", 405, "http-method-not-allowed")
        self.asked(None)

    async def test_other_method(self) -> None:
        await self.refused(b"GET /index.html HTTP/1.1\r\n\r\n", 405, "http-method-not-allowed")
        answer = await exchange(reactor, self.relay.port, b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        self.assertIn(b"\r\nAllow: CONNECT, GET, HEAD\r\n", answer.partition(b"\r\n\r\n")[0])

    async def test_startup_log(self) -> None:
        """twistd's log says the port is also an HTTPS proxy, and to where."""
        from twisted.logger import formatEvent, globalLogPublisher

        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        relay = start_relay(self, reactor, "https://127.0.0.1:1", None, tunnel_to=("epmsi-mirror.example",))
        start_relay(self, reactor, "https://127.0.0.1:1", None, no_tunnel=True)
        said = [formatEvent(e) for e in events if "HTTPS proxy" in formatEvent(e)]
        self.assertEqual(len(said), 2, said)
        self.assertIn("tunnelling only to 127.0.0.1:1, epmsi-mirror.example:443, for every allowed client", said[0])
        self.assertTrue(said[0].endswith(f"from http://127.0.0.1:{relay.port}/proxy.pac (or /wpad.dat)"), said[0])
        self.assertIn("HTTPS proxy mode off (--no-tunnel)", said[1])

    async def test_garbage(self) -> None:
        await self.refused(b"Hello there\r\n\r\n", 400, "http-bad-request")

    async def test_head_too_large(self) -> None:
        request = b"CONNECT localhost:443 HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n"
        await self.refused(request, 431, "http-head-too-large")

    async def test_slow_head(self) -> None:
        await self.refused(b"CONNECT localhost", 408, "hello-timeout")

    async def test_client_not_allowed_french(self) -> None:
        self.relay.service.set_allowlist(["10.9.9.9"])
        body = await self.refused(
            b"CONNECT localhost:443 HTTP/1.1\r\nAccept-Language: fr-FR,fr;q=0.9,en;q=0.5\r\n\r\n",
            403,
            "not-authorized",
        )
        self.assertIn("n'est pas autoris", body)

    async def test_client_not_allowed_english(self) -> None:
        self.relay.service.set_allowlist(["10.9.9.9"])
        body = await self.refused(b"CONNECT localhost:443 HTTP/1.1\r\n\r\n", 403, "not-authorized")
        self.assertIn("is not allowed to connect to this e-POP relay", body)

    async def test_no_tunnel(self) -> None:
        relay = self.relay = start_relay(self, reactor, "https://127.0.0.1:1", None, no_tunnel=True)
        body = await self.refused(f"CONNECT localhost:{self.far.port} HTTP/1.1\r\n\r\n".encode(), 403, "tunnels-disabled")
        self.assertIn("--no-tunnel", body)
        del relay

    async def test_unreachable(self) -> None:
        """A listed destination where nothing listens: 502, journaled with its cause."""
        from tests.support import free_port

        port = free_port()
        relay = self.relay = start_relay(self, reactor, "https://127.0.0.1:1", None, tunnel_to=(f"127.0.0.1:{port}",))
        body = await self.refused(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode(), 502, "tunnel-unreachable")
        self.assertIn(f"Could not reach 127.0.0.1:{port}: connection refused", body)
        closed = self.asked(f"127.0.0.1:{port}")
        self.assertEqual(closed["error"], "refused")
        [released] = relay.records("object-released")
        self.assertEqual(released["outcome"], "failed")

    async def test_caps_count_tunnels(self) -> None:
        """An open tunnel counts against --max-connections: one more is told 503, naming the limit."""
        relay = self.relay = start_relay(
            self, reactor, "https://127.0.0.1:1", None,
            tunnel_to=(f"127.0.0.1:{self.far.port}",), max_connections=1,
        )
        client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", relay.port), Protocol())
        self.addCleanup(client.transport.abortConnection)
        client.transport.write(f"CONNECT 127.0.0.1:{self.far.port} HTTP/1.1\r\n\r\n".encode())
        self.assertTrue(await poll_until(reactor, lambda: len(self.far.accepted) == 1))
        answer = await exchange(reactor, relay.port, f"CONNECT 127.0.0.1:{self.far.port} HTTP/1.1\r\n\r\n".encode())
        self.assertTrue(answer.startswith(b"HTTP/1.1 503 "), answer)
        self.assertIn("already serving 1 connections", body_of(answer))
        self.assertEqual(len(self.far.accepted), 1)
        closed = relay.records("connection-closed")
        self.assertEqual([r["reason"] for r in closed], ["too-many-connections"])
        # In the client's language, as every refusal the head can ask for.
        answer = await exchange(
            reactor, relay.port, f"CONNECT 127.0.0.1:{self.far.port} HTTP/1.1\r\nAccept-Language: fr\r\n\r\n".encode()
        )
        self.assertTrue(answer.startswith(b"HTTP/1.1 503 "), answer)
        self.assertIn("Le relais sert déjà 1 connexions", body_of(answer))
        self.assertEqual(len(self.far.accepted), 1)

    async def test_epop_still_served(self) -> None:
        """A first byte that is not a letter is still e-POP's."""
        answer = await exchange(reactor, self.relay.port, b"\x02garbage")
        self.assertNotIn(b"HTTP/1.1", answer)


class TunnelIdleTests(TestCase):
    async def test_idle_tunnel_closed(self) -> None:
        far = SilentServer(self, reactor)
        relay = start_relay(
            self, reactor, "https://127.0.0.1:1", None,
            tunnel_to=(f"127.0.0.1:{far.port}",), tunnel_idle_timeout=0.3,
        )
        answer = await exchange(reactor, relay.port, f"CONNECT 127.0.0.1:{far.port} HTTP/1.1\r\n\r\nearly".encode())
        self.assertEqual(answer, b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.assertTrue(await poll_until(reactor, lambda: relay.records("connection-closed")))
        [closed] = relay.records("connection-closed")
        self.assertEqual(closed["reason"], "tunnel-idle")
        [released] = relay.records("object-released")
        self.assertEqual(released["bytes_in"], 5)
        self.assertEqual(len(far.accepted), 1)
