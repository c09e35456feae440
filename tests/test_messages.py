"""
Messages people read, in French and English: the catalog is complete and
compiled, the language is chosen as documented, and each failure a user can
meet is provoked for real over loopback and read in both languages.
"""

from __future__ import annotations

import gettext
import io
import os
import string
from pathlib import Path

import trustme
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po
from twisted.internet import reactor
from twisted.internet.error import DNSLookupError
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from epop import cli
from epop.workstation.client import RelayAddress, test_connection
from epop.errors import RelayError, describe_connect_failure
from epop.local_tls import ClientTLS, RelayTLS
from epop.messages import Text, choose_language
from epop.epmsi.proxy import ProxyConfig
from epop.wire import FrameType, encode_message
from tests.relaying import raw_connect, start_relay
from tests.support import free_port, make_trustme_sandbox, write_random_file

PACKAGE = Path(__file__).resolve().parent.parent / "epop"
PO = PACKAGE / "locale" / "fr" / "LC_MESSAGES" / "epop.po"
MO = PO.with_suffix(".mo")


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


class CatalogTests(SynchronousTestCase):
    def test_every_message_translated(self) -> None:
        """Every Text(...) in the code has a French translation with the same placeholders."""
        used = {
            message
            for _, _, message, _, _ in extract_from_dir(
                str(PACKAGE), keywords={"Text": None}, comment_tags=()
            )
            if message
        }
        with open(PO, "rb") as f:
            catalog = read_po(f)
        translated = {m.id: m.string for m in catalog if m.id}
        self.assertEqual(sorted(used - set(translated)), [], "run: make catalogs, then translate")
        for msgid in used:
            self.assertTrue(translated[msgid], msgid)
            self.assertEqual(_fields(msgid), _fields(translated[msgid]), msgid)

    def test_compiled_catalog_is_current(self) -> None:
        """The shipped .mo says what the .po says (make catalogs was run)."""
        with open(PO, "rb") as f:
            catalog = read_po(f)
        with open(MO, "rb") as f:
            compiled = gettext.GNUTranslations(f)
        for message in catalog:
            if message.id:
                self.assertEqual(compiled.gettext(message.id), message.string, message.id)

    def test_choose_language(self) -> None:
        """French for fr locales, as POSIX reads them; --lang wins; English otherwise."""
        self.assertEqual(choose_language({"LANG": "fr_FR.UTF-8"}), "fr")
        self.assertEqual(choose_language({"LANG": "fr_FR.UTF-8", "LC_ALL": "en_US"}), "en")
        self.assertEqual(choose_language({"LC_MESSAGES": "fr_CA", "LANG": "en_GB"}), "fr")
        self.assertEqual(choose_language({"LC_ALL": "", "LANG": "fr"}), "fr")
        self.assertEqual(choose_language({}), "en")
        self.assertEqual(choose_language({"LANG": "fr_FR"}, "en"), "en")

    def test_wire_round_trip(self) -> None:
        """A message travels as template and parameters and renders on arrival."""
        text = Text("Could not reach e-PMSI at {url}: {reason}.", url="https://x", reason=Text("host name not found"))
        error = RelayError.from_wire({"code": "c", "message": str(text), "text": text.to_wire()})
        self.assertEqual(error.render("fr"), "Impossible de joindre e-PMSI à https://x : nom de machine introuvable.")
        broken = RelayError.from_wire({"code": "c", "message": "as sent", "text": {"template": "{missing}", "params": {}}})
        self.assertEqual(broken.render("fr"), "as sent")

    def test_host_name_not_found(self) -> None:
        """A relay name that does not resolve says so (DNS is never queried from tests)."""
        error = describe_connect_failure(Failure(DNSLookupError("relay.chu")), "relay.chu:3358")
        self.assertEqual(
            error.render("en"),
            "Could not reach the relay at relay.chu:3358: host name not found. "
            "Check the relay's name, or use its IP address.",
        )
        self.assertEqual(
            error.render("fr"),
            "Impossible de joindre le relais relay.chu:3358 : nom de machine introuvable. "
            "Vérifiez le nom du relais, ou utilisez son adresse IP.",
        )


class ProvokedTests(TestCase):
    """Each failure, for real on loopback, read in English and in French."""

    def setUp(self) -> None:
        self.sandbox = make_trustme_sandbox(self, reactor)

    def assertBoth(self, error: object, english: str, french: str) -> None:
        self.assertIn(english, error.render("en"))  # type: ignore[attr-defined]
        self.assertIn(french, error.render("fr"))  # type: ignore[attr-defined]

    async def test_no_answer_in_time(self) -> None:
        """A machine that accepts and never answers: no answer in time."""
        port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        report = await test_connection(reactor, relay=RelayAddress("127.0.0.1", port.getHost().port), timeout=0.2)
        self.assertBoth(report.error, "no answer in time", "pas de réponse dans le délai")
        self.assertIn("la connexion au relais", report.step.render("fr"))

    async def test_connection_refused(self) -> None:
        """Nothing listens there: the manual's questions, in both languages."""
        report = await test_connection(reactor, relay=RelayAddress("127.0.0.1", free_port()))
        self.assertBoth(
            report.error,
            "Is the relay started and listening? Is the port the same on both sides? Is a firewall blocking it?",
            "Le relais est-il démarré et à l'écoute ? Le port est-il le même des deux côtés ?",
        )

    async def test_not_authorized(self) -> None:
        """The manual's refusal, with the client's own address, in both languages."""
        relay = start_relay(self, reactor, self.sandbox.url, self.sandbox.ca_path, allow=("10.0.0.0/8",))
        report = await test_connection(reactor, relay=relay.endpoint)
        self.assertRegex(report.error.render("en"), r"^Client 127\.0\.0\.1:\d+ is not allowed to connect to this e-POP relay$")
        self.assertRegex(report.error.render("fr"), r"^Le client 127\.0\.0\.1:\d+ n'est pas autorisé à se connecter à ce relais e-POP$")
        self.assertEqual(report.step.render("fr"), "l'autorisation par le relais")

    async def test_tls_failures(self) -> None:
        """Unknown or untrusted authority, relay without TLS, relay requiring TLS: each named in both languages."""
        ca = trustme.CA()
        issued = ca.issue_cert("127.0.0.1")
        paths = {}
        for name, pem in [("ca", ca.cert_pem), ("cert", issued.cert_chain_pems[0]), ("key", issued.private_key_pem)]:
            paths[name] = self.mktemp()
            pem.write_to_path(paths[name])
        other = self.mktemp()
        trustme.CA().cert_pem.write_to_path(other)
        secure = start_relay(
            self, reactor, self.sandbox.url, self.sandbox.ca_path,
            tls=RelayTLS(paths["cert"], paths["key"], require=True),
        )
        unknown = await test_connection(reactor, relay=secure.endpoint, tls=ClientTLS())
        self.assertBoth(unknown.error, "signed by an unknown authority", "signé par une autorité inconnue")
        untrusted = await test_connection(reactor, relay=secure.endpoint, tls=ClientTLS(other))
        self.assertBoth(untrusted.error, "does not trust", "ne fait pas confiance")
        required = await test_connection(reactor, relay=secure.endpoint)
        self.assertBoth(required.error, "accepts encrypted connections only", "n'accepte que les connexions chiffrées")
        plain = start_relay(self, reactor, self.sandbox.url, self.sandbox.ca_path)
        no_tls = await test_connection(reactor, relay=plain.endpoint, tls=ClientTLS(paths["ca"]))
        self.assertBoth(no_tls.error, "does not speak TLS", "ne parle pas TLS")

    async def test_version_mismatch(self) -> None:
        """A workstation speaking only another version is told which ones match."""
        relay = start_relay(self, reactor, self.sandbox.url, self.sandbox.ca_path)
        client = await raw_connect(self, reactor, relay.port)
        client.transport.write(encode_message(FrameType.HELLO, {"protocol": "e-pop", "versions": [9]}))
        await client.closed
        [frame] = client.messages(FrameType.ERROR)
        self.assertBoth(
            RelayError.from_wire(frame),
            "This relay speaks e-POP protocol version 1; the workstation offered 9.",
            "Ce relais parle le protocole e-POP version 1 ; le poste a proposé 9.",
        )

    async def test_relay_cannot_reach_epmsi(self) -> None:
        """The relay's own trouble reaching e-PMSI, with its cause, and through a proxy."""
        relay = start_relay(self, reactor, f"https://127.0.0.1:{free_port()}", self.sandbox.ca_path)
        report = await test_connection(reactor, relay=relay.endpoint)
        self.assertBoth(report.error, "connection refused: nothing listens there", "connexion refusée : rien n'écoute à cette adresse")
        self.assertEqual(report.step.render("fr"), "la connexion du relais à e-PMSI")
        proxied = start_relay(
            self, reactor, self.sandbox.url, self.sandbox.ca_path,
            proxy=ProxyConfig("127.0.0.1", free_port()),
        )
        report = await test_connection(reactor, relay=proxied.endpoint)
        self.assertEqual(report.error.cause, "proxy-unreachable")
        self.assertBoth(report.error, "through the proxy", "par le proxy")

    async def test_command_line_in_french(self) -> None:
        """With LANG=fr_FR the command speaks French; --lang en switches back."""
        relay = start_relay(self, reactor, self.sandbox.url, self.sandbox.ca_path)
        path = self.mktemp()
        write_random_file(path, 1024)
        env = {"EPOP_CONFIG": os.path.abspath(self.mktemp()), "LANG": "fr_FR.UTF-8"}

        async def epop(*argv: str) -> tuple[int, str, str]:
            out, err = io.BytesIO(), io.StringIO()
            code = await cli.run(reactor, list(argv), stdout=out, stderr=err, environ=env)
            return code, out.getvalue().decode(), err.getvalue()

        code, out, _ = await epop("test", "--relay", str(relay.endpoint))
        self.assertEqual(code, 0)
        self.assertIn("Par le relais : e-PMSI", out)
        code, _, err = await epop("send", path, "--relay", str(relay.endpoint), "-F", "big=" + "x" * 70000)
        self.assertEqual(code, 1)
        self.assertIn("e-PMSI a répondu 413", err)
        self.assertIn("Non accepté : ", err)
        code, _, err = await epop("--lang", "en", "test", "--relay", f"127.0.0.1:{free_port()}")
        self.assertIn("Test failed at this step: reaching the relay.", err)
        code, _, err = await epop("test", "--relay", f"127.0.0.1:{free_port()}")
        self.assertIn("Le test a échoué à cette étape : la connexion au relais.", err)
