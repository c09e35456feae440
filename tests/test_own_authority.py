"""
C{twistd epop --tls-cert auto}: the relay's own authority and certificate,
made, kept and renewed in its folder, and used for real by C{epop test
--tls} over loopback.
"""

from __future__ import annotations

import datetime
import io
import os
import socket
import stat
import subprocess

import trustme
from cryptography import x509
from OpenSSL import SSL, crypto
from twisted.internet import reactor, threads
from twisted.logger import capturedLogs, formatEvent
from twisted.python import usage
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase

from epop import cli
from epop.certificates import fingerprint
from epop.relay import tap
from epop.relay.own_authority import (
    CA_CERT,
    CA_KEY,
    CERT,
    KEY,
    OwnAuthorityError,
    coverage_for,
    own_authority_tls,
)
from tests.relaying import start_relay
from tests.support import free_port, make_trustme_sandbox
from tests.test_twistd_start import run_foreground_twistd


def _load(path: str) -> x509.Certificate:
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _messages(events: list[dict[str, object]]) -> list[str]:
    return [formatEvent(e) for e in events]


class FingerprintTests(SynchronousTestCase):
    def test_as_openssl_prints_it(self) -> None:
        """fingerprint() gives OpenSSL's SHA-256 fingerprint, for every kind of certificate."""
        pem = trustme.CA().cert_pem.bytes()
        path = self.mktemp()
        FilePath(path).setContent(pem)
        printed = subprocess.run(
            ["openssl", "x509", "-in", path, "-noout", "-fingerprint", "-sha256"],
            capture_output=True, check=True, text=True,
        ).stdout.strip()
        expected = "SHA256 " + printed.partition("=")[2]
        self.assertRegex(expected, r"^SHA256 ([0-9A-F]{2}:){31}[0-9A-F]{2}$")
        loaded = x509.load_pem_x509_certificate(pem)
        self.assertEqual(fingerprint(loaded), expected)
        self.assertEqual(fingerprint(crypto.load_certificate(crypto.FILETYPE_PEM, pem)), expected)
        from twisted.internet.ssl import Certificate

        self.assertEqual(fingerprint(Certificate.loadPEM(pem)), expected)


class OptionsTests(SynchronousTestCase):
    """twistd epop's options with --tls-cert auto, parsed as twistd parses them."""

    def setUp(self) -> None:
        self.folder = FilePath(self.mktemp())
        self.folder.makedirs()
        self.tls_dir = self.folder.child("tls").path
        self.port = free_port()

    def parse(self, *args: str, interface: str = "127.0.0.1") -> tap.Options:
        options = tap.Options()
        options.parseOptions(
            [
                "--tls-cert", "auto",
                "--tls-dir", self.tls_dir,
                "--listen", f"tcp:{self.port}:interface={interface}",
                "--console", "none",
                "--journal", self.folder.child("journal.jsonl").path,
                *args,
            ]
        )
        return options

    def file(self, name: str) -> str:
        return os.path.join(self.tls_dir, name)

    def test_first_start_makes_the_files(self) -> None:
        """The folder at 0700, keys at 0600, the chain is the authority, both fingerprints logged; --require-tls and --tls-client-ca apply."""
        workstations_ca = self.folder.child("workstations-ca.pem")
        workstations_ca.setContent(trustme.CA().cert_pem.bytes())
        with capturedLogs() as events:
            tls = self.parse("--require-tls", "--tls-client-ca", workstations_ca.path).settings().tls
        assert tls is not None
        self.assertEqual(
            (tls.cert, tls.key, tls.chain, tls.client_ca, tls.require),
            (self.file(CERT), self.file(KEY), self.file(CA_CERT), workstations_ca.path, True),
        )
        tls.options()  # the files make a server context, client CA included
        self.assertEqual(_mode(self.tls_dir), 0o700)
        self.assertEqual(_mode(self.file(CA_KEY)), 0o600)
        self.assertEqual(_mode(self.file(KEY)), 0o600)
        self.assertEqual(sorted(os.listdir(self.tls_dir)), sorted([CA_CERT, CA_KEY, CERT, KEY]))
        authority, cert = _load(self.file(CA_CERT)), _load(self.file(CERT))
        cert.verify_directly_issued_by(authority)
        self.assertLessEqual(cert.not_valid_after_utc - cert.not_valid_before_utc, datetime.timedelta(days=825))
        self.assertGreaterEqual(
            authority.not_valid_after_utc - authority.not_valid_before_utc, datetime.timedelta(days=3650)
        )
        said = " ".join(_messages(events))
        self.assertIn(f"fingerprint {fingerprint(authority)}; this is the one workstations confirm", said)
        self.assertIn(fingerprint(cert), said)

    def test_second_start_reuses_them(self) -> None:
        """A second start keeps the authority and the certificate (same fingerprints)."""
        self.parse()
        before = [FilePath(self.file(n)).getContent() for n in (CA_CERT, CA_KEY, CERT, KEY)]
        with capturedLogs() as events:
            self.parse()
        self.assertEqual([FilePath(self.file(n)).getContent() for n in (CA_CERT, CA_KEY, CERT, KEY)], before)
        self.assertFalse([m for m in _messages(events) if m.startswith("Issued")])

    def test_new_address_new_certificate_same_authority(self) -> None:
        """Listening on an address the certificate does not cover: a new one, from the same authority."""
        self.parse()
        authority = FilePath(self.file(CA_CERT)).getContent()
        old = _load(self.file(CERT))
        with capturedLogs() as events:
            self.parse(interface="127.0.0.2")
        self.assertEqual(FilePath(self.file(CA_CERT)).getContent(), authority)
        new = _load(self.file(CERT))
        self.assertNotEqual(fingerprint(new), fingerprint(old))
        new.verify_directly_issued_by(_load(self.file(CA_CERT)))
        names = new.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertIn("127.0.0.2", [str(ip) for ip in names.get_values_for_type(x509.IPAddress)])
        self.assertIn("did not cover 127.0.0.2", " ".join(_messages(events)))

    def test_key_open_to_others_refused(self) -> None:
        """A key other users can read stops the start, naming it, as SSH does."""
        self.parse()
        os.chmod(self.file(CA_KEY), 0o644)
        error = self.assertRaises(usage.UsageError, self.parse)
        self.assertIn(f"the private key {self.file(CA_KEY)} is open to other users (mode 0644)", str(error))
        self.assertIn("chmod 600", str(error))

    def test_folder_that_cannot_be_made(self) -> None:
        """A --tls-dir that cannot be created is refused, naming it."""
        blocker = self.folder.child("a-file")
        blocker.setContent(b"")
        self.tls_dir = blocker.child("tls").path
        error = self.assertRaises(usage.UsageError, self.parse)
        self.assertIn(f"--tls-dir: cannot create {self.tls_dir}, the folder of the relay's certificates", str(error))

    def test_authority_without_its_key(self) -> None:
        """An authority whose key went missing is refused: the relay never replaces it silently."""
        self.parse()
        os.unlink(self.file(CA_KEY))
        error = self.assertRaises(usage.UsageError, self.parse)
        self.assertIn("has no usable private key beside it", str(error))

    def test_damaged_files(self) -> None:
        """A damaged authority is refused and left alone; a damaged relay certificate is made again."""
        self.parse()
        authority = _load(self.file(CA_CERT))
        FilePath(self.file(CERT)).setContent(b"not a certificate")
        self.parse()
        _load(self.file(CERT)).verify_directly_issued_by(authority)
        FilePath(self.file(CA_CERT)).setContent(b"not a certificate")
        error = self.assertRaises(usage.UsageError, self.parse)
        self.assertIn(
            f"cannot read the relay's certificate authority {self.file(CA_CERT)}: it is not a PEM certificate",
            str(error),
        )
        self.assertEqual(FilePath(self.file(CA_CERT)).getContent(), b"not a certificate")

    def test_options_that_do_not_go_with_auto(self) -> None:
        """--tls-key and --tls-chain with auto, an unreadable --tls-client-ca, and --tls-dir without auto are usage errors."""
        for args, text in [
            (["--tls-key", "k.pem"], "--tls-key: cannot be given with --tls-cert auto"),
            (["--tls-chain", "c.pem"], "--tls-chain: cannot be given with --tls-cert auto"),
        ]:
            error = self.assertRaises(usage.UsageError, self.parse, *args)
            self.assertIn(text, str(error))
        options = tap.Options()
        error = self.assertRaises(usage.UsageError, options.parseOptions, ["--tls-dir", self.tls_dir])
        self.assertIn("--tls-dir: is the folder of --tls-cert auto", str(error))
        self.assertFalse(os.path.exists(self.tls_dir))
        error = self.assertRaises(usage.UsageError, self.parse, "--tls-client-ca", "nothere.pem")
        self.assertIn("--tls-client-ca: cannot read the client CA file nothere.pem", str(error))

    def test_settings_file_and_default_folder(self) -> None:
        """tls-cert = auto in the settings file; without tls-dir, a tls folder beside the journal."""
        config = self.folder.child("relay.ini")
        journal = self.folder.child("state").child("journal.jsonl")
        journal.parent().makedirs()
        config.setContent(
            f"[epop]\ntls-cert = auto\njournal = {journal.path}\nconsole = none\n"
            f"listen = tcp:{self.port}:interface=127.0.0.1\n".encode()
        )
        options = tap.Options()
        options.parseOptions(["--config", config.path])
        tls = options.settings().tls
        assert tls is not None
        self.assertEqual(tls.chain, journal.parent().child("tls").child(CA_CERT).path)

    def test_console_on_the_network(self) -> None:
        """The console served over HTTPS takes auto too, and its address is covered."""
        password = self.folder.child("console-password")
        password.setContent(b"s3cret\n")
        options = self.parse(
            "--console", f"tcp:{free_port()}:interface=0.0.0.0", "--console-password-file", password.path
        )
        self.assertEqual(options.console.tls, options.settings().tls)
        names = _load(self.file(CERT)).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertIn(socket.gethostname().lower(), names.get_values_for_type(x509.DNSName))


class RenewalTests(SynchronousTestCase):
    def test_expiring_certificate_renewed_by_the_same_authority(self) -> None:
        """A certificate with less than 30 days left is issued again; the authority stays."""
        folder = self.mktemp()
        coverage = coverage_for(["tcp:3358:interface=127.0.0.1"])
        start = datetime.datetime.now(datetime.timezone.utc)
        own_authority_tls(folder, coverage, now=lambda: start)
        first = _load(os.path.join(folder, CERT))
        own_authority_tls(folder, coverage, now=lambda: start + datetime.timedelta(days=780))
        self.assertEqual(fingerprint(_load(os.path.join(folder, CERT))), fingerprint(first))
        with capturedLogs() as events:
            own_authority_tls(folder, coverage, now=lambda: start + datetime.timedelta(days=800))
        renewed = _load(os.path.join(folder, CERT))
        self.assertNotEqual(fingerprint(renewed), fingerprint(first))
        renewed.verify_directly_issued_by(_load(os.path.join(folder, CA_CERT)))
        self.assertIn("expires on", " ".join(_messages(events)))

    def test_expiring_authority_refused(self) -> None:
        """An authority near its end stops the start: only the administrator may replace it."""
        folder = self.mktemp()
        coverage = coverage_for(["tcp:3358:interface=127.0.0.1"])
        start = datetime.datetime.now(datetime.timezone.utc)
        own_authority_tls(folder, coverage, now=lambda: start)
        before = FilePath(os.path.join(folder, CA_CERT)).getContent()
        error = self.assertRaises(
            OwnAuthorityError, own_authority_tls, folder, coverage,
            now=lambda: start + datetime.timedelta(days=3630),
        )
        self.assertIn(f"the relay's certificate authority {os.path.join(os.path.abspath(folder), CA_CERT)} expires on", str(error))
        self.assertEqual(FilePath(os.path.join(folder, CA_CERT)).getContent(), before)

    def test_wildcard_covers_this_machine(self) -> None:
        """tcp:3358 covers every address of this machine, its names, and loopback."""
        from epop.relay.network_interfaces import LocalAddress

        here = [LocalAddress("eth0", "10.1.2.3", 4, False, False), LocalAddress("eth0", "fd00::3", 6, False, False)]
        coverage = coverage_for(["tcp:3358"], addresses=here, host_names=["relay", "relay.chu.local"])
        self.assertEqual(
            [str(a) for a in coverage.addresses], ["127.0.0.1", "::1", "10.1.2.3", "fd00::3"]
        )
        self.assertEqual(coverage.names, ("localhost", "relay", "relay.chu.local"))
        one = coverage_for(["haproxy:tcp:3358:interface=10.9.8.7"], addresses=here, host_names=["relay"])
        self.assertEqual([str(a) for a in one.addresses], ["127.0.0.1", "::1", "10.9.8.7"])
        self.assertEqual(one.names, ("localhost",))


class OverTheWireTests(TestCase):
    """A relay started with --tls-cert auto, reached by the real epop command."""

    def setUp(self) -> None:
        self.sandbox = make_trustme_sandbox(self, reactor)
        self.folder = FilePath(self.mktemp())
        self.folder.makedirs()

    async def test_epop_test_with_the_authority(self) -> None:
        """epop test --tls --relay-ca <the authority> succeeds; the relay sends its authority too."""
        tls_dir = self.folder.child("tls").path
        options = tap.Options()
        options.parseOptions(
            ["--tls-cert", "auto", "--tls-dir", tls_dir, "--console", "none", "--no-check",
             "--listen", "tcp:0:interface=127.0.0.1", "--journal", self.folder.child("j.jsonl").path]
        )
        relay = start_relay(self, reactor, self.sandbox.url, self.sandbox.ca_path, tls=options.settings().tls)
        stderr, stdout = io.StringIO(), io.BytesIO()
        code = await cli.run(
            reactor,
            ["test", "--relay", f"127.0.0.1:{relay.port}", "--tls", "--relay-ca", os.path.join(tls_dir, CA_CERT)],
            stdout=stdout,
            stderr=stderr,
            environ={"EPOP_CONFIG": os.path.abspath(self.mktemp())},
        )
        self.assertEqual(code, 0, stderr.getvalue())

        def chain() -> list[str]:
            context = SSL.Context(SSL.TLS_CLIENT_METHOD)
            with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as raw:
                raw.settimeout(None)  # pyOpenSSL wants a blocking socket
                connection = SSL.Connection(context, raw)
                connection.set_connect_state()
                connection.do_handshake()
                found = connection.get_peer_cert_chain() or []
                return [fingerprint(c) for c in found]

        presented = await threads.deferToThread(chain)
        self.assertEqual(
            presented,
            [fingerprint(_load(os.path.join(tls_dir, CERT))), fingerprint(_load(os.path.join(tls_dir, CA_CERT)))],
        )


    async def test_trust_on_first_use(self) -> None:
        """
        The fingerprint the relay logs is the one epop trust takes: trusted
        once, a bare epop test goes encrypted to a relay that requires it.
        """
        options = tap.Options()
        with capturedLogs() as events:
            options.parseOptions(
                ["--tls-cert", "auto", "--require-tls", "--console", "none", "--no-check",
                 "--listen", "tcp:0:interface=127.0.0.1", "--journal", self.folder.child("j.jsonl").path]
            )
        [logged] = [e["authority_fingerprint"] for e in events if "authority_fingerprint" in e]
        relay = start_relay(self, reactor, self.sandbox.url, self.sandbox.ca_path, tls=options.settings().tls)
        environ = {"EPOP_CONFIG": os.path.abspath(self.mktemp()), "LANG": "C"}

        async def epop(*argv: str) -> tuple[int, str]:
            stdout, stderr = io.BytesIO(), io.StringIO()
            code = await cli.run(
                reactor, list(argv), stdout=stdout, stderr=stderr, environ=environ, stdin=io.StringIO("")
            )
            return code, stdout.getvalue().decode() + stderr.getvalue()

        code, said = await epop("trust", f"127.0.0.1:{relay.port}", "--fingerprint", str(logged))
        self.assertEqual(code, 0, said)
        code, said = await epop("test")
        self.assertEqual(code, 0, said)
        self.assertIn("Encrypted (TLSv1.", said)


class TwistdTests(SynchronousTestCase):
    def test_tls_key_with_auto_refused(self) -> None:
        """The real twistd epop refuses --tls-key beside --tls-cert auto, in one clear line."""
        folder = FilePath(self.mktemp())
        folder.makedirs()
        code, output = run_foreground_twistd(
            folder, "--console=none", "--tls-cert", "auto", "--tls-key", "relay-key.pem"
        )
        self.assertEqual(code, 1, output)
        self.assertIn("--tls-key: cannot be given with --tls-cert auto", output)
        self.assertFalse(folder.child("tls").exists())
