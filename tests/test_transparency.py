"""
The relay hands each workstation e-PMSI's answer as e-PMSI sent it: no
redirect followed, no cookie kept from one workstation for another, no
compression asked for on the workstation's behalf.
"""

from __future__ import annotations

import json

import trustme
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.trial.unittest import TestCase

from epop.workstation import RelayClientProtocol, connect_to_relay
from epop.sandbox.ca import server_tls_options
from tests.relaying import start_relay


class Echo(Resource):
    isLeaf = True

    def render_GET(self, request):  # type: ignore[no-untyped-def]
        if request.path == b"/login":
            request.addCookie(b"JSESSIONID", b"workstation-a", path=b"/", secure=True)
            return b"logged in"
        if request.path == b"/moved":
            request.setResponseCode(302)
            request.setHeader(b"location", b"https://elsewhere.example/")
            return b""
        headers = {k.decode(): [v.decode() for v in vs] for k, vs in request.requestHeaders.getAllRawHeaders()}
        return json.dumps(headers).encode()


class TransparencyTests(TestCase):
    def setUp(self) -> None:
        ca = trustme.CA()
        server = ca.issue_cert("127.0.0.1")
        ca_path = self.mktemp()
        ca.cert_pem.write_to_path(ca_path)
        options = server_tls_options(server.cert_chain_pems[0].bytes(), server.private_key_pem.bytes())
        site = Site(Echo())
        port = reactor.listenSSL(0, site, options, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.relay = start_relay(self, reactor, f"https://127.0.0.1:{port.getHost().port}", ca_path)

    async def get(self, path: str) -> tuple[int, dict[str, list[str]], bytes]:
        protocol: RelayClientProtocol = await connect_to_relay(reactor, self.relay.endpoint)
        try:
            reply = await protocol.request("GET", path)
        finally:
            protocol.close()
        headers: dict[str, list[str]] = {}
        for name, value in reply.headers:
            headers.setdefault(name.lower(), []).append(value)
        return reply.status, headers, reply.body or b""

    async def test_redirect_passed_through(self) -> None:
        """A redirect reaches the workstation; the relay never follows it elsewhere."""
        status, headers, _ = await self.get("/moved")
        self.assertEqual(status, 302)
        self.assertEqual(headers["location"], ["https://elsewhere.example/"])

    async def test_no_shared_cookies(self) -> None:
        """A cookie set for one workstation is not sent for the next one."""
        status, headers, _ = await self.get("/login")
        self.assertIn("JSESSIONID=workstation-a", headers["set-cookie"][0])
        _, _, body = await self.get("/echo")
        self.assertNotIn("cookie", json.loads(body))

    async def test_no_compression_added(self) -> None:
        """The relay adds no Accept-Encoding and leaves no empty Content-Encoding."""
        _, headers, body = await self.get("/echo")
        self.assertNotIn("accept-encoding", json.loads(body))
        self.assertNotIn("content-encoding", headers)
