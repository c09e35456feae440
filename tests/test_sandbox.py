"""
Tests for L{epop.sandbox}, over real TLS connections on loopback.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import tracemalloc
from html.parser import HTMLParser
from typing import Any

import treq
import trustme
from cryptography import x509
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.error import CannotListenError
from twisted.logger import LogEvent, LogLevel, Logger, formatEvent
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
)

from epop.sandbox.retention import Keep, parse_keep
from epop.sandbox.ca import ensure_certificates
from epop.sandbox.service import SandboxService
from epop.sandbox.uploads import MAX_FIELD_SIZE, RECEIPT_NAME, sanitize_filename
from tests.support import (
    InMemoryBody,
    TestSandbox,
    make_trusting_client,
    make_trustme_sandbox,
    poll_until,
    sha256_file,
    write_random_file,
)

MiB = 1 << 20
UPLOAD_ID = re.compile(r"^\d{8}T\d{6}-\d{6}$")


def _reactor() -> Any:
    """The running reactor, imported late so trial's --reactor choice holds."""
    from twisted.internet import reactor

    return reactor


class _RawClient(Protocol):
    """A bare TLS client able to stop in the middle of a request body."""

    def __init__(self) -> None:
        self.received = b""
        self.reason: Failure | None = None
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure) -> None:
        self.reason = reason
        self.lost.callback(None)


class SandboxUploadTests(TestCase):
    """The sandbox web site, reached through TLS with a trustme CA."""

    def setUp(self) -> None:
        self.reactor = _reactor()
        self.sandbox: TestSandbox = make_trustme_sandbox(self, self.reactor)
        self.client = self.sandbox.client(self.reactor)

    def _stored_entries(self) -> list[str]:
        """Every name in the upload directory, hidden or not."""
        return sorted(child.basename() for child in self.sandbox.upload_directory.children())

    async def _post_multipart(self, body: bytes, boundary: str = "XyZ") -> Any:
        return await self.client.post(
            self.sandbox.url + "/syriusUpload.do",
            data=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )

    async def test_multipart_upload(self) -> None:
        """A multipart file is stored under its name with its size and SHA-256; field values are never echoed."""
        source = self.mktemp()
        digest = write_random_file(source, 3 * MiB + 12345, seed=1)
        fields = {
            "userId": "alice",
            "userPwd": "s3cret-Pwd!",
            "year": "2026",
            "period": "M10",
            "finess": "123456789",
        }
        with open(source, "rb") as handle:
            response = await self.client.post(
                self.sandbox.url + "/syriusUpload.do?lang=fr",
                data=fields,
                files={"theFile": ("RSS 2026.txt", "application/octet-stream", handle)},
            )
            raw = await response.content()
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders(b"Content-Type"), [b"application/json"]
        )
        self.assertNotIn(b"s3cret", raw)
        receipt = json.loads(raw)
        self.assertEqual(receipt["status"], "received")
        self.assertEqual(receipt["method"], "POST")
        self.assertEqual(receipt["path"], "/syriusUpload.do")
        self.assertRegex(receipt["upload"], UPLOAD_ID)
        self.assertEqual(
            receipt["files"],
            [
                {
                    "field": "theFile",
                    "filename": "RSS 2026.txt",
                    "size": 3 * MiB + 12345,
                    "sha256": digest,
                }
            ],
        )
        self.assertEqual(sorted(receipt["fields"]), sorted(fields))
        stored = self.sandbox.upload_directory.child(receipt["upload"]).child(
            "RSS 2026.txt"
        )
        self.assertEqual(self.sandbox.complete_files(), [stored])
        self.assertEqual(self.sandbox.sha256_of(stored), digest)
        self.assertEqual(self._stored_entries(), [receipt["upload"]])

    async def test_raw_upload(self) -> None:
        """A non-multipart body becomes one file, named from Content-Disposition or upload.bin."""
        named = await self.client.put(
            self.sandbox.url + "/any/where",
            data=b"first body",
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Disposition": 'attachment; filename="../ANO.zip"',
            },
        )
        named_receipt = await named.json()
        anonymous = await self.client.post(self.sandbox.url + "/", data=b"second")
        anonymous_receipt = await anonymous.json()

        self.assertEqual((named.code, anonymous.code), (200, 200))
        self.assertEqual(named_receipt["method"], "PUT")
        self.assertEqual(named_receipt["path"], "/any/where")
        self.assertEqual(named_receipt["fields"], [])
        self.assertEqual(
            named_receipt["files"],
            [
                {
                    "field": None,
                    "filename": "ANO.zip",
                    "size": 10,
                    "sha256": hashlib.sha256(b"first body").hexdigest(),
                }
            ],
        )
        self.assertEqual(anonymous_receipt["files"][0]["filename"], None)
        self.assertLess(named_receipt["upload"], anonymous_receipt["upload"])
        first, second = self.sandbox.complete_files()
        self.assertEqual(first.basename(), "ANO.zip")
        self.assertEqual(first.getContent(), b"first body")
        self.assertEqual(named_receipt["files"][0]["sha256"], sha256_file(first))
        self.assertEqual(second.basename(), "upload.bin")
        self.assertEqual(second.getContent(), b"second")

    async def test_chunked_raw_upload(self) -> None:
        """A body without Content-Length (chunked transfer encoding) is streamed and stored too."""
        chunks = [b"a" * 70000, b"b" * 3, b"c" * 100000]
        response = await self.client.post(
            self.sandbox.url + "/chunked", data=InMemoryBody(chunks, known_length=False)
        )
        receipt = await response.json()
        self.assertEqual(response.code, 200)
        self.assertEqual(receipt["files"][0]["size"], sum(map(len, chunks)))
        [stored] = self.sandbox.complete_files()
        self.assertEqual(stored.getContent(), b"".join(chunks))

    async def test_get_and_head(self) -> None:
        """GET and HEAD on any path but / answer 200 with a small JSON document (HEAD without body)."""
        got = await self.client.get(self.sandbox.url + "/some/path?x=1")
        document = await got.json()
        head = await self.client.head(self.sandbox.url + "/syriusUpload.do")
        head_body = await head.content()
        self.assertEqual(got.code, 200)
        self.assertEqual(document, {"service": "e-PMSI sandbox", "status": "ok"})
        self.assertEqual(head.code, 200)
        self.assertEqual(head_body, b"")
        self.assertEqual(
            head.headers.getRawHeaders(b"Content-Type"), [b"application/json"]
        )
        self.assertEqual(self._stored_entries(), [])

    async def test_other_methods_not_allowed(self) -> None:
        """Other methods get a JSON 405 with an Allow header, and a body they carry is not kept."""
        response = await self.client.request(
            "DELETE", self.sandbox.url + "/syriusUpload.do", data=b"body to forget"
        )
        document = await response.json()
        self.assertEqual(response.code, 405)
        self.assertEqual(document["status"], "error")
        self.assertEqual(
            response.headers.getRawHeaders(b"Allow"), [b"GET, HEAD, POST, PUT"]
        )
        self.assertEqual(self._stored_entries(), [])

    async def test_truncated_multipart(self) -> None:
        """A multipart body without its closing boundary gets a JSON 400 and leaves no file."""
        body = (
            b"--XyZ\r\n"
            b'Content-Disposition: form-data; name="userId"\r\n\r\n'
            b"alice\r\n"
            b"--XyZ\r\n"
            b'Content-Disposition: form-data; name="theFile"; filename="RSS.txt"\r\n'
            b"Content-Type: text/plain\r\n\r\n" + b"x" * 200000
        )
        response = await self._post_multipart(body)
        document = await response.json()
        self.assertEqual(response.code, 400)
        self.assertEqual(response.headers.getRawHeaders(b"Content-Type"), [b"application/json"])
        self.assertEqual(document["status"], "error")
        self.assertIn("multipart", document["error"])
        self.assertEqual(self.sandbox.complete_files(), [])
        self.assertEqual(self._stored_entries(), [])

    async def test_malformed_part_headers(self) -> None:
        """A part without Content-Disposition is a JSON 400 and deletes the files already written."""
        body = (
            b"--XyZ\r\n"
            b'Content-Disposition: form-data; name="theFile"; filename="ok.txt"\r\n\r\n'
            b"complete part\r\n"
            b"--XyZ\r\n"
            b"Content-Type: text/plain\r\n\r\n"
            b"orphan\r\n"
            b"--XyZ--\r\n"
        )
        response = await self._post_multipart(body)
        document = await response.json()
        self.assertEqual(response.code, 400)
        self.assertEqual(document["status"], "error")
        self.assertEqual(self._stored_entries(), [])

    async def test_missing_boundary(self) -> None:
        """multipart/form-data without a boundary parameter is a JSON 400."""
        response = await self.client.post(
            self.sandbox.url + "/",
            data=b"whatever",
            headers={"Content-Type": "multipart/form-data"},
        )
        self.assertEqual(response.code, 400)
        self.assertEqual((await response.json())["status"], "error")
        self.assertEqual(self._stored_entries(), [])

    async def test_oversized_field(self) -> None:
        """A form field value above MAX_FIELD_SIZE gets a 413 that does not echo it, and nothing is kept."""
        response = await self.client.post(
            self.sandbox.url + "/syriusUpload.do",
            data={"userPwd": "p" * (MAX_FIELD_SIZE + 1)},
            files={"theFile": ("RSS.txt", "text/plain", io.BytesIO(b"data"))},
        )
        raw = await response.content()
        self.assertEqual(response.code, 413)
        self.assertIn(b"userPwd", raw)
        self.assertNotIn(b"ppppp", raw)
        self.assertEqual(self._stored_entries(), [])

    async def test_filename_sanitized(self) -> None:
        """A path in a part's filename is reduced to its base name inside the upload folder."""
        response = await self.client.post(
            self.sandbox.url + "/syriusUpload.do",
            files=[
                ("theFile", ("../../etc/passwd", "text/plain", io.BytesIO(b"one"))),
                ("other", ("..\\..\\passwd", "text/plain", io.BytesIO(b"two"))),
                ("hidden", (".profile", "text/plain", io.BytesIO(b"three"))),
            ],
        )
        receipt = await response.json()
        self.assertEqual(response.code, 200)
        self.assertEqual(
            sorted(entry["filename"] for entry in receipt["files"]),
            ["passwd", "passwd-2", "profile"],
        )
        folder = self.sandbox.upload_directory.child(receipt["upload"])
        self.assertEqual(
            sorted(child.basename() for child in folder.children()),
            [RECEIPT_NAME, "passwd", "passwd-2", "profile"],
        )
        contents = {"theFile": b"one", "other": b"two", "hidden": b"three"}
        for entry in receipt["files"]:
            stored = folder.child(entry["filename"]).getContent()
            self.assertEqual(stored, contents[entry["field"]])
        self.assertEqual(self._stored_entries(), [receipt["upload"]])

    async def _abandon_upload(self, head: bytes, declared: int, sent: bytes) -> None:
        """Send C{head} and part of a body of C{declared} bytes, then abort."""
        endpoint = SSL4ClientEndpoint(
            self.reactor,
            "127.0.0.1",
            self.sandbox.port.getHost().port,
            optionsForClientTLS(
                "127.0.0.1", trustRoot=Certificate.loadPEM(self.sandbox.ca.cert_pem.bytes())
            ),
        )
        client = await connectProtocol(endpoint, _RawClient())
        client.transport.write(
            head + b"Content-Length: %d\r\n\r\n" % (declared,) + sent
        )
        upload_directory = self.sandbox.upload_directory

        def partial_data_arrived() -> bool:
            return any(
                child.basename().endswith(".partial")
                and any(part.getsize() > 0 for part in child.children())
                for child in upload_directory.children()
            )

        arrived = await poll_until(self.reactor, partial_data_arrived)
        self.assertTrue(arrived, "the sandbox never started writing the body")
        self.assertEqual(self.sandbox.complete_files(), [])
        client.transport.abortConnection()
        await client.lost
        emptied = await poll_until(self.reactor, lambda: not upload_directory.children())
        self.assertTrue(emptied, f"leftovers: {self._stored_entries()}")
        self.assertEqual(self.sandbox.complete_files(), [])
        self.assertEqual(client.received, b"")

    async def test_disconnect_mid_multipart(self) -> None:
        """A client vanishing in the middle of a multipart file leaves no file at all."""
        part = (
            b"--XyZ\r\n"
            b'Content-Disposition: form-data; name="theFile"; filename="RSS.txt"\r\n\r\n'
        )
        await self._abandon_upload(
            b"POST /syriusUpload.do HTTP/1.1\r\n"
            b"Host: 127.0.0.1\r\n"
            b"Content-Type: multipart/form-data; boundary=XyZ\r\n",
            declared=50 * MiB,
            sent=part + b"z" * MiB,
        )

    async def test_disconnect_mid_raw(self) -> None:
        """A client vanishing in the middle of a raw upload leaves no file at all."""
        await self._abandon_upload(
            b"PUT /file HTTP/1.1\r\nHost: 127.0.0.1\r\n",
            declared=50 * MiB,
            sent=b"r" * MiB,
        )

    async def test_memory_stays_flat(self) -> None:
        """Uploading 48 MiB allocates only a small, bounded amount of memory."""
        source = self.mktemp()
        size = 48 * MiB
        digest = write_random_file(source, size, seed=7)
        tracemalloc.start()
        try:
            with open(source, "rb") as handle:
                response = await self.client.post(
                    self.sandbox.url + "/syriusUpload.do",
                    files={"theFile": ("big.bin", "application/octet-stream", handle)},
                )
                receipt = await response.json()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        self.assertEqual(receipt["files"][0]["sha256"], digest)
        self.assertLess(peak, 8 * MiB, f"peak traced memory: {peak} bytes")


class _FormReader(HTMLParser):
    """Collects the page's forms: their attributes and their controls'."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        for name in ("src", "href"):
            if attributes.get(name):
                self.external.append(f"{tag} {name}={attributes[name]}")
        if tag == "script":
            self.external.append("script")
        if tag == "form":
            self.forms.append({"attributes": attributes, "controls": []})
        elif tag in ("input", "button") and self.forms:
            self.forms[-1]["controls"].append(attributes)


class SandboxFormTests(TestCase):
    """The sandbox's own upload page at GET /, fetched with plain HTTP requests."""

    FIELDS = ["userId", "userPwd", "year", "period", "finess"]

    async def _form(self, sandbox: TestSandbox) -> tuple[Any, dict[str, Any], _FormReader]:
        response = await sandbox.client(_reactor()).get(sandbox.url + "/")
        reader = _FormReader()
        reader.feed((await response.content()).decode("utf-8"))
        [form] = reader.forms
        return response, form, reader

    async def test_page(self) -> None:
        """GET / is an HTML page whose one multipart form posts the documented fields, and loads nothing."""
        sandbox = make_trustme_sandbox(self, _reactor())
        response, form, reader = await self._form(sandbox)
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders(b"Content-Type"), [b"text/html; charset=utf-8"]
        )
        self.assertEqual(
            form["attributes"],
            {
                "method": "post",
                "action": "/syriusUpload.do",
                "enctype": "multipart/form-data",
            },
        )
        controls = {c.get("name"): c.get("type") for c in form["controls"]}
        self.assertEqual(
            controls,
            {
                "userId": "text",
                "userPwd": "password",
                "year": "text",
                "period": "text",
                "finess": "text",
                "theFile": "file",
                None: "submit",
            },
        )
        self.assertEqual(reader.external, [])
        head = await sandbox.client(_reactor()).head(sandbox.url + "/")
        self.assertEqual(await head.content(), b"")
        self.assertEqual(
            head.headers.getRawHeaders(b"Content-Type"), [b"text/html; charset=utf-8"]
        )

    async def test_configured_path(self) -> None:
        """The form posts to the upload path the sandbox was given, HTML-escaped."""
        sandbox = make_trustme_sandbox(self, _reactor(), upload_path='/up"load.do')
        _, form, _ = await self._form(sandbox)
        self.assertEqual(form["attributes"]["action"], '/up"load.do')

    async def test_posting_the_form(self) -> None:
        """Posting the form's fields to its action stores the file and lists the fields, without values."""
        sandbox = make_trustme_sandbox(self, _reactor())
        _, form, _ = await self._form(sandbox)
        response = await sandbox.client(_reactor()).post(
            sandbox.url + form["attributes"]["action"],
            data={name: "secret-" + name for name in self.FIELDS},
            files={"theFile": ("rss.zip", "application/zip", io.BytesIO(b"PK rss"))},
        )
        receipt = await response.json()
        self.assertEqual(response.code, 200)
        self.assertEqual(receipt["path"], "/syriusUpload.do")
        self.assertEqual(sorted(receipt["fields"]), sorted(self.FIELDS))
        self.assertEqual(
            [(f["field"], f["filename"], f["sha256"]) for f in receipt["files"]],
            [("theFile", "rss.zip", hashlib.sha256(b"PK rss").hexdigest())],
        )
        self.assertNotIn("secret-", json.dumps(receipt))


class SanitizeFilenameTests(TestCase):
    """Client file names never escape their upload folder."""

    def test_cases(self) -> None:
        """Paths, hidden names, control characters and empty names are neutralised."""
        cases = {
            "../../etc/passwd": "passwd",
            "C:\\Users\\x\\RSS.txt": "RSS.txt",
            ".bashrc": "bashrc",
            "...": "upload.bin",
            "": "upload.bin",
            None: "upload.bin",
            "dir/": "upload.bin",
            "a\x00b\nc.txt": "abc.txt",
            "evil.partial": "evil.partial.bin",
            "CON.txt": "_CON.txt",
            "ANO 2026 (1).zip": "ANO 2026 (1).zip",
        }
        for given, expected in cases.items():
            self.assertEqual(sanitize_filename(given), expected, repr(given))


class CertificateTests(TestCase):
    """ensure_certificates makes, and then keeps, a usable private CA."""

    def _contents(self, directory: FilePath) -> dict[str, bytes]:
        return {child.basename(): child.getContent() for child in directory.children()}

    def test_creates_ca_and_server_certificate(self) -> None:
        """A fresh directory gets a CA and a server cert it signed, with IP and DNS SANs and private keys."""
        directory = FilePath(self.mktemp())
        certificates = ensure_certificates(directory)
        ca = x509.load_pem_x509_certificate(certificates.ca_path.getContent())
        server = x509.load_pem_x509_certificate(certificates.cert_path.getContent())
        server.verify_directly_issued_by(ca)
        sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(sans.get_values_for_type(x509.DNSName), ["localhost"])
        self.assertEqual(
            [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)],
            ["127.0.0.1", "::1"],
        )
        for child in directory.children():
            mode = stat.S_IMODE(os.stat(child.path).st_mode)
            if child.basename().endswith("key.pem"):
                self.assertEqual(mode, 0o600, child.basename())
        self.assertEqual(
            sorted(child.basename() for child in directory.children()),
            ["ca-key.pem", "ca.pem", "server-key.pem", "server.pem"],
        )

    def test_reuses_existing_files(self) -> None:
        """A second call with the same hostnames rewrites nothing."""
        directory = FilePath(self.mktemp())
        first = ensure_certificates(directory)
        before = self._contents(directory)
        second = ensure_certificates(directory, ("127.0.0.1", "localhost"))
        self.assertEqual(first, second)
        self.assertEqual(self._contents(directory), before)

    def test_reissues_for_new_hostname(self) -> None:
        """A hostname the server cert lacks gets a new server cert under the same CA."""
        directory = FilePath(self.mktemp())
        certificates = ensure_certificates(directory)
        ca_before = certificates.ca_path.getContent()
        cert_before = certificates.cert_path.getContent()
        ensure_certificates(directory, ("relay.example", "192.0.2.7"))
        self.assertEqual(certificates.ca_path.getContent(), ca_before)
        self.assertNotEqual(certificates.cert_path.getContent(), cert_before)
        server = x509.load_pem_x509_certificate(certificates.cert_path.getContent())
        sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(sans.get_values_for_type(x509.DNSName), ["relay.example"])
        self.assertEqual(
            [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)], ["192.0.2.7"]
        )

    def test_regenerates_missing_files(self) -> None:
        """A missing server key, or a missing CA, is regenerated."""
        directory = FilePath(self.mktemp())
        certificates = ensure_certificates(directory)
        ca_before = certificates.ca_path.getContent()
        certificates.key_path.remove()
        ensure_certificates(directory)
        self.assertTrue(certificates.key_path.exists())
        self.assertEqual(certificates.ca_path.getContent(), ca_before)
        certificates.ca_path.remove()
        ensure_certificates(directory)
        self.assertNotEqual(certificates.ca_path.getContent(), ca_before)
        ca = x509.load_pem_x509_certificate(certificates.ca_path.getContent())
        x509.load_pem_x509_certificate(
            certificates.cert_path.getContent()
        ).verify_directly_issued_by(ca)


class SandboxServiceTests(TestCase):
    """SandboxService serves the sandbox over TLS with its own CA."""

    def setUp(self) -> None:
        self.reactor = _reactor()
        self.events: list[LogEvent] = []
        self.service = SandboxService(self.reactor, FilePath(self.mktemp()), port=0)
        self.service.log = Logger(observer=self.events.append)
        self.service.startService()
        self.addCleanup(self.service.stopService)

    async def test_tls_with_generated_ca(self) -> None:
        """A client verifying 127.0.0.1 against the generated CA completes the handshake and gets 200."""
        service = self.service
        assert service.certificates is not None and service.port is not None
        self.assertEqual(service.url, f"https://127.0.0.1:{service.port.getHost().port}")
        client = make_trusting_client(self.reactor, service.certificates.ca_path.getContent())
        response = await client.get(service.url + "/status")
        self.assertEqual(response.code, 200)
        self.assertEqual(
            await response.json(), {"service": "e-PMSI sandbox", "status": "ok"}
        )
        upload = await client.post(service.url + "/syriusUpload.do", data=b"payload")
        receipt = await upload.json()
        self.assertEqual(
            service.directory.descendant(["uploads", receipt["upload"], "upload.bin"])
            .getContent(),
            b"payload",
        )

    async def test_port_taken(self) -> None:
        """epop sandbox on a port already taken: a line saying so and what to do, no traceback."""
        from twisted.internet.utils import getProcessOutputAndValue

        from tests.test_cli_interrupt import epop_command

        assert self.service.port is not None
        taken = self.service.port.getHost().port
        for language, expected in (
            ("C", f"epop: The sandbox cannot listen on 127.0.0.1 port {taken}: Address already in use. "),
            ("fr_FR.UTF-8", f"epop: Le bac à sable ne peut pas écouter sur 127.0.0.1 port {taken} : "
                            "Adresse déjà utilisée. "),
        ):
            [program, *first] = epop_command()
            out, err, status = await getProcessOutputAndValue(
                program,
                [*first, "sandbox", "--port", str(taken), "--directory", self.mktemp()],
                env=dict(os.environ, LANG=language, LC_ALL=language),
                reactor=self.reactor,
            )
            said = err.decode("utf-8")
            self.assertEqual(status, 1, said)
            self.assertIn(expected, said)
            self.assertIn("--port (0", said)
            self.assertNotIn("Traceback", said)

    async def test_untrusted_ca_refused(self) -> None:
        """A client trusting another CA refuses the sandbox's certificate."""
        client = make_trusting_client(self.reactor, trustme.CA().cert_pem.bytes())
        with self.assertRaises(Exception) as raised:
            await client.get(self.service.url + "/")
        self.assertIn("certificate verify failed", repr(raised.exception))

    def test_start_event(self) -> None:
        """Starting logs one event telling the URL and the CA file to pass to --ca-file."""
        [event] = [e for e in self.events if e["log_level"] == LogLevel.info]
        assert self.service.certificates is not None
        self.assertEqual(event["url"], self.service.url)
        self.assertEqual(event["ca_path"], self.service.certificates.ca_path.path)
        self.assertIn("--ca-file", formatEvent(event))


class SandboxServiceIPv6Tests(TestCase):
    """SandboxService on an IPv6 interface."""

    async def test_ipv6_url(self) -> None:
        """On ::1 the URL puts the address in brackets and TLS verification of ::1 succeeds."""
        reactor = _reactor()
        service = SandboxService(reactor, FilePath(self.mktemp()), port=0, interface="::1")
        try:
            service.startService()
        except CannotListenError as error:
            raise SkipTest(f"no IPv6 loopback here: {error}") from None
        self.addCleanup(service.stopService)
        assert service.port is not None and service.certificates is not None
        self.assertEqual(service.url, f"https://[::1]:{service.port.getHost().port}")
        # treq (through hyperlink) cannot encode IPv6 literal URLs: use Agent.
        agent = Agent(
            reactor,
            contextFactory=BrowserLikePolicyForHTTPS(
                trustRoot=Certificate.loadPEM(service.certificates.ca_path.getContent())
            ),
            pool=HTTPConnectionPool(reactor, persistent=False),
        )
        response = await agent.request(b"GET", service.url.encode("ascii") + b"/status")
        body = await treq.content(response)
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body)["status"], "ok")


class RetentionTests(TestCase):
    """--keep: the newest uploads stay, the oldest go; the one just received always stays."""

    def setUp(self) -> None:
        self.reactor = _reactor()
        self.sandbox: TestSandbox = make_trustme_sandbox(self, self.reactor)
        self.client = self.sandbox.client(self.reactor)

    async def upload(self, data: bytes) -> str:
        answer = await self.client.post(self.sandbox.url + "/syriusUpload.do", data=data)
        self.assertEqual(answer.code, 200)
        return str((await answer.json())["upload"])

    def stored(self) -> list[str]:
        return sorted(child.basename() for child in self.sandbox.upload_directory.children())

    async def test_a_number_of_uploads(self) -> None:
        self.sandbox.site.keep = parse_keep("2")
        ids = [await self.upload(b"upload %d" % i) for i in range(4)]
        self.assertEqual(self.stored(), ids[2:])

    async def test_a_total_size(self) -> None:
        """1 KiB kept: two 400-byte uploads fit, a third pushes the oldest out; a big one stays alone."""
        self.sandbox.site.keep = parse_keep("1K")
        ids = [await self.upload(bytes(400)) for _ in range(3)]
        self.assertEqual(self.stored(), ids[1:])
        big = await self.upload(bytes(5000))
        self.assertEqual(self.stored(), [big])

    async def test_all_by_default(self) -> None:
        ids = [await self.upload(b"x") for _ in range(3)]
        self.assertEqual(self.stored(), ids)

    def test_parse_keep(self) -> None:
        self.assertEqual(parse_keep("20"), Keep(uploads=20))
        self.assertEqual(parse_keep("500M"), Keep(size=500 << 20))
        self.assertEqual(parse_keep("2g"), Keep(size=2 << 30))
        self.assertEqual(parse_keep("all"), Keep())
        for given, described in [("500M", "at most 500 MiB of uploads"), ("2g", "at most 2 GiB of uploads"),
                                 ("1536K", "at most 1536 KiB of uploads"), ("20", "the newest 20 upload(s)")]:
            self.assertEqual(parse_keep(given).describe(), described)
        self.assertEqual(Keep(size=1000).describe(), "at most 1000 bytes of uploads")
        self.assertEqual(parse_keep("500M").describe("fr"), "au plus 500 Mio d'envois")
        self.assertEqual(Keep(size=1000).describe("fr"), "au plus 1000 octets d'envois")
        for bad in ("0", "-1", "0M", "5T", "lots", ""):
            with self.assertRaises(ValueError) as raised:
                parse_keep(bad)
            self.assertIn("expected a number of uploads (20), a size (500M, 2G) or 'all'", str(raised.exception))

    def test_command_line(self) -> None:
        from twisted.python import usage

        from epop.sandbox.commands import SandboxOptions

        options = SandboxOptions()
        options.parseOptions([])
        self.assertEqual(options["keep"], Keep(size=500 << 20))
        with self.assertRaises(usage.UsageError) as raised:
            SandboxOptions().parseOptions(["--keep", "lots"])
        self.assertTrue(str(raised.exception).startswith("--keep: expected a number of uploads"))


class RejectTests(TestCase):
    """--reject PATH=STATUS: uploads there are refused, to rehearse e-PMSI saying no."""

    def setUp(self) -> None:
        self.reactor = _reactor()
        self.sandbox: TestSandbox = make_trustme_sandbox(self, self.reactor)
        self.sandbox.site.reject = {"/syriusUpload.do": 403}
        self.client = self.sandbox.client(self.reactor)

    async def test_refused_and_nothing_stored(self) -> None:
        answer = await self.client.post(self.sandbox.url + "/syriusUpload.do?x=1", data=b"a file")
        self.assertEqual(answer.code, 403)
        body = await answer.json()
        self.assertEqual(body["status"], "error")
        self.assertIn("refuses uploads to /syriusUpload.do with 403", body["error"])
        self.assertIn("nothing was stored", body["error"])
        self.assertEqual(self.sandbox.upload_directory.children(), [])
        # Another path, and a GET, are served as usual.
        other = await self.client.post(self.sandbox.url + "/elsewhere", data=b"a file")
        self.assertEqual(other.code, 200)
        await other.content()
        page = await self.client.get(self.sandbox.url + "/syriusUpload.do")
        self.assertEqual(page.code, 200)
        await page.content()

    def test_command_line(self) -> None:
        from twisted.python import usage

        from epop.sandbox.commands import SandboxOptions

        options = SandboxOptions()
        options.parseOptions(["--reject", "/syriusUpload.do=403", "--reject", "/other=500"])
        self.assertEqual(options["reject"], {"/syriusUpload.do": 403, "/other": 500})
        for bad in ("/syriusUpload.do", "syriusUpload.do=403", "/x=200", "/x=abc", "/x=600"):
            with self.assertRaises(usage.UsageError) as raised:
                SandboxOptions().parseOptions(["--reject", bad])
            self.assertIn("expected PATH=STATUS", str(raised.exception))
