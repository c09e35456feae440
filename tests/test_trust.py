"""
Encryption of the local hop in one step, on the workstation's side: the
saved C{tls} and C{relay-ca} settings, C{epop trust} (trust on first use)
against a real relay over loopback, the hard error when the relay later
presents another authority, and C{epop test} naming the TLS version.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess

import trustme
from cryptography import x509
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from epop import cli
from epop.certificates import fingerprint, normalize_fingerprint
from epop.local_tls import RelayTLS
from epop.messages import reason_of
from tests.relaying import RunningRelay, start_relay
from tests.support import make_trustme_sandbox, poll_until, write_random_file


class _Terminal(io.StringIO):
    """What a person types at a terminal: standard input that is a tty."""

    def isatty(self) -> bool:
        return True


def _openssl_fingerprint(path: str) -> str:
    """What C{openssl x509 -fingerprint -sha256} says of the certificate in C{path}."""
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", path],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    return out.split("=", 1)[1]


class FingerprintTests(SynchronousTestCase):
    def test_same_as_openssl(self) -> None:
        """The fingerprint is OpenSSL's SHA-256 one, in upper case after C{SHA256 }."""
        ca = trustme.CA()
        path = self.mktemp()
        ca.cert_pem.write_to_path(path)
        found = fingerprint(x509.load_pem_x509_certificate(ca.cert_pem.bytes()))
        self.assertEqual(found, "SHA256 " + _openssl_fingerprint(path).upper())
        self.assertRegex(found, r"^SHA256 ([0-9A-F]{2}:){31}[0-9A-F]{2}$")

    def test_typed_forms(self) -> None:
        """With or without the prefix and colons, in any case: the same fingerprint."""
        shown = fingerprint(x509.load_pem_x509_certificate(trustme.CA().cert_pem.bytes()))
        digits = shown[len("SHA256 "):].replace(":", "")
        for typed in (shown, shown.lower(), digits, digits.lower(), "sha256:" + digits, " SHA256 " + shown[7:] + " "):
            self.assertEqual(normalize_fingerprint(typed), shown, typed)
        for wrong in ("", "SHA256 AB:CD", digits[:-1] + "G", "MD5 " + digits):
            self.assertRaises(ValueError, normalize_fingerprint, wrong)

    def test_other_algorithms(self) -> None:
        """A SHA-1 or MD5 fingerprint, 64 digits or not, is named for what it is: only SHA-256 is taken."""
        digits = "AB" * 32
        for typed, algorithm in (("SHA1 " + digits, "SHA1"), ("sha1 Fingerprint=" + digits[:40], "SHA1"),
                                 ("SHA-1:" + digits, "SHA1"), ("md5 Fingerprint=" + digits[:32], "MD5"),
                                 ("SHA512 " + digits, "SHA512")):
            error = self.assertRaises(ValueError, normalize_fingerprint, typed)
            said = reason_of(error).render("en")
            self.assertIn(f"is a {algorithm} fingerprint: only SHA-256 fingerprints are accepted", said)
            self.assertNotIn("64 hexadecimal digits", said)


#: Where the fingerprint is, as the French errors say it.
PLACE_IN_FRENCH = "(elle est dans les messages du relais à son démarrage, pas dans le journal des connexions)"


class _RelayTLSCase(TestCase):
    """A sandbox, an authority, the workstation's settings file, and relays on TLS to try epop on."""

    def setUp(self) -> None:
        self.sandbox = make_trustme_sandbox(self, reactor)
        self.config = os.path.abspath(self.mktemp())
        self.ca = trustme.CA()
        self.ca_fingerprint = fingerprint(x509.load_pem_x509_certificate(self.ca.cert_pem.bytes()))

    def write(self, data: bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        return path

    def relay(
        self, ca: trustme.CA, *, chain: bytes | None = None, names: tuple[str, ...] = (), **tls: object
    ) -> RunningRelay:
        """
        A relay whose certificate comes from C{ca}, for C{names} (the
        loopback's by default), sending C{chain} (the CA's own by default)
        after it; its certificate's PEM is kept as C{leaf_pem}.
        """
        issued = ca.issue_cert(*(names or ("127.0.0.1", "localhost")))
        settings = RelayTLS(
            self.write(issued.cert_chain_pems[0].bytes()),
            self.write(issued.private_key_pem.bytes()),
            chain=self.write(ca.cert_pem.bytes() if chain is None else chain),
            **tls,  # type: ignore[arg-type]
        )
        running = start_relay(self, reactor, self.sandbox.url, self.sandbox.ca_path, tls=settings)
        running.leaf_pem = issued.cert_chain_pems[0].bytes()  # type: ignore[attr-defined]
        return running

    async def epop(self, *argv: str, stdin: io.StringIO | None = None) -> tuple[int, str, str]:
        stdout, stderr = io.BytesIO(), io.StringIO()
        code = await cli.run(
            reactor, list(argv), stdout=stdout, stderr=stderr,
            environ={"EPOP_CONFIG": self.config, "LANG": "C"},
            stdin=stdin if stdin is not None else io.StringIO(""),
        )
        return code, stdout.getvalue().decode(), stderr.getvalue()

    @property
    def trusted_file(self) -> str:
        return os.path.join(os.path.dirname(self.config), "relay-ca.pem")

    def assertNothingSaved(self) -> None:
        self.assertFalse(os.path.exists(self.config))
        self.assertFalse(os.path.exists(self.trusted_file))



class TrustTests(_RelayTLSCase):
    async def test_fingerprint_given(self) -> None:
        """
        --fingerprint that matches saves the authority, tls and relay-ca, with
        sane modes; then a bare `epop test` goes over TLS (the relay requires
        it) and names the TLS version, in English and French.
        """
        relay = self.relay(self.ca, require=True)
        typed = self.ca_fingerprint.lower().replace(":", "")
        code, _, err = await self.epop("trust", str(relay.endpoint), "--fingerprint", typed)
        self.assertEqual(code, 0, err)
        self.assertIn(self.ca_fingerprint, err)
        self.assertIn(
            f"Trusted the authority of the relay at {relay.endpoint}: {self.ca_fingerprint}, "
            f"saved in {self.trusted_file}.", err,
        )
        self.assertIn(f"Settings saved in {self.config}: relay = {relay.endpoint}, tls = yes,", err)
        with open(self.trusted_file, "rb") as f:
            self.assertEqual(f.read(), self.ca.cert_pem.bytes())
        self.assertEqual(stat.S_IMODE(os.stat(self.trusted_file).st_mode), 0o644)
        self.assertEqual(stat.S_IMODE(os.stat(self.config).st_mode), 0o600)
        code, out, _ = await self.epop("config", "show")
        self.assertIn("tls = yes\n", out)
        self.assertIn(f"relay-ca = {self.trusted_file}\n", out)
        self.assertIn(f"relay = {relay.endpoint}\n", out)
        code, out, err = await self.epop("test")
        self.assertEqual(code, 0, err)
        self.assertIn("Encrypted (TLSv1.3).", out)
        code, out, err = await self.epop("--lang", "fr", "test")
        self.assertEqual(code, 0, err)
        self.assertIn("Chiffré (TLSv1.3).", out)

    async def test_plain_test_names_no_encryption(self) -> None:
        """A plain session's report does not claim to be encrypted."""
        relay = self.relay(self.ca)
        code, out, err = await self.epop("test", "--relay", str(relay.endpoint))
        self.assertEqual(code, 0, err)
        self.assertNotIn("Encrypted", out)

    async def test_fingerprint_mismatch(self) -> None:
        """A --fingerprint that does not match is an error naming both; nothing saved."""
        relay = self.relay(self.ca)
        other = fingerprint(x509.load_pem_x509_certificate(trustme.CA().cert_pem.bytes()))
        code, _, err = await self.epop("trust", str(relay.endpoint), "--fingerprint", other)
        self.assertEqual(code, 1)
        self.assertIn(f"presents the authority {self.ca_fingerprint}, not the {other}", err)
        self.assertNothingSaved()
        code, _, err = await self.epop("--lang", "fr", "trust", str(relay.endpoint), "--fingerprint", other)
        self.assertEqual(code, 1)
        self.assertIn(PLACE_IN_FRENCH, " ".join(err.split()))

    async def test_confirmed_at_the_terminal(self) -> None:
        """At a terminal, "yes" (or "oui") trusts; the fingerprint is shown before the question."""
        relay = self.relay(self.ca)
        for answer in ("oui\n", "YES\n"):
            code, _, err = await self.epop("trust", str(relay.endpoint), stdin=_Terminal(answer))
            self.assertEqual(code, 0, err)
            self.assertLess(err.index(self.ca_fingerprint), err.index("Trust this authority? (yes/no)"))
            self.assertTrue(os.path.exists(self.trusted_file))
            os.remove(self.config)

    async def test_refused_at_the_terminal(self) -> None:
        """Anything but yes/oui, even nothing at all, refuses: exit 1, nothing saved."""
        relay = self.relay(self.ca)
        for answer in ("no\n", "y\n", ""):
            code, _, err = await self.epop("trust", str(relay.endpoint), stdin=_Terminal(answer))
            self.assertEqual(code, 1, answer)
            self.assertIn("Not trusted: nothing was saved.", err)
            self.assertNothingSaved()

    async def test_short_answer_asked_again(self) -> None:
        """"y" or "o" asks once more, for the whole word: yes then trusts, anything else refuses; "no" is not asked again."""
        relay = self.relay(self.ca)
        again = "Type yes (or oui) to trust it, anything else to refuse: "
        for answers, status in (("y\nyes\n", 0), ("o\noui\n", 0), ("y\ny\n", 1), ("o\n", 1), ("no\nyes\n", 1)):
            code, _, err = await self.epop("trust", str(relay.endpoint), stdin=_Terminal(answers))
            self.assertEqual(code, status, (answers, err))
            self.assertEqual(err.count(again), 0 if answers.startswith("no") else 1, answers)
            self.assertEqual(os.path.exists(self.trusted_file), status == 0, answers)
            if status:
                self.assertIn("Not trusted: nothing was saved.", err)
            else:
                os.remove(self.config)
                os.remove(self.trusted_file)
        code, _, err = await self.epop("--lang", "fr", "trust", str(relay.endpoint), stdin=_Terminal("o\noui\n"))
        self.assertEqual(code, 0, err)
        self.assertIn("Tapez oui (ou yes) pour lui faire confiance, toute autre réponse refuse : ", err)

    async def test_no_terminal(self) -> None:
        """Without a terminal nor --fingerprint, nothing is asked, nothing saved: a script never hangs."""
        relay = self.relay(self.ca)
        code, _, err = await self.epop("trust", str(relay.endpoint), stdin=io.StringIO("yes\n"))
        self.assertEqual(code, 1)
        self.assertIn(self.ca_fingerprint, err)
        self.assertIn("give --fingerprint", err)
        self.assertNotIn("(yes/no)", err)
        self.assertNothingSaved()

    async def test_another_authority_later(self) -> None:
        """
        A relay reinstalled with another authority: `epop test` and `epop send`
        fail naming both fingerprints, and nothing goes in plain.
        """
        first = self.relay(self.ca)
        code, _, err = await self.epop("trust", str(first.endpoint), "--fingerprint", self.ca_fingerprint)
        self.assertEqual(code, 0, err)
        other = trustme.CA()
        other_fingerprint = fingerprint(x509.load_pem_x509_certificate(other.cert_pem.bytes()))
        second = self.relay(other)  # accepts plain sessions too: none may come
        where = str(second.endpoint)
        code, out, err = await self.epop("test", "--relay", where)
        self.assertEqual(code, 1)
        for text in (self.ca_fingerprint, other_fingerprint, "someone may be in between", "epop trust again"):
            self.assertIn(text, err)
        path = self.mktemp()
        write_random_file(path, 64 * 1024, seed=14)
        code, out, err = await self.epop("send", path, "--relay", where)
        self.assertEqual(code, 1)
        self.assertIn(other_fingerprint, err)
        self.assertIn("was not delivered", err)
        self.assertTrue(await poll_until(reactor, lambda: len(second.records("connection-closed")) == 2))
        self.assertEqual({r["reason"] for r in second.records("connection-closed")}, {"tls-failed"})
        self.assertNotIn("object-instantiated", second.types())
        self.assertEqual(self.sandbox.complete_files(), [])
        code, _, err = await self.epop("--lang", "fr", "test", "--relay", where)
        self.assertIn(other_fingerprint, err)
        self.assertIn("quelqu'un", err)

    async def test_hospital_pki_refused(self) -> None:
        """A chain whose top is not self-signed is a hospital's PKI: refused, saying to use its CA file."""
        intermediate = self.ca.create_child_ca()
        relay = self.relay(intermediate, chain=intermediate.cert_pem.bytes())
        code, _, err = await self.epop("trust", str(relay.endpoint), stdin=_Terminal("yes\n"))
        self.assertEqual(code, 1)
        self.assertIn("epop config set relay-ca FILE", err)
        self.assertNotIn("(yes/no)", err)
        self.assertNothingSaved()

    async def test_self_signed_certificate(self) -> None:
        """
        A single self-signed certificate, made as docs/encryption.md shows,
        is its own authority: trusted, then used.
        """
        cert, key = self.mktemp(), self.mktemp()
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "825", "-keyout", key, "-out", cert, "-subj", "/CN=epop relay",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
            check=True, capture_output=True,
        )
        relay = start_relay(self, reactor, self.sandbox.url, self.sandbox.ca_path, tls=RelayTLS(cert, key))
        expected = "SHA256 " + _openssl_fingerprint(cert).upper()
        code, _, err = await self.epop("trust", str(relay.endpoint), "--fingerprint", expected)
        self.assertEqual(code, 0, err)
        code, out, err = await self.epop("test")
        self.assertEqual(code, 0, err)
        self.assertIn("Encrypted (TLS", out)

    async def test_no_tls_on_the_relay(self) -> None:
        """A relay without a certificate: said so, with how its administrator turns TLS on; nothing saved."""
        relay = start_relay(self, reactor, self.sandbox.url, self.sandbox.ca_path)
        code, _, err = await self.epop("trust", str(relay.endpoint), "--fingerprint", self.ca_fingerprint)
        self.assertEqual(code, 1)
        self.assertIn(f"The relay at {relay.endpoint} does not speak TLS, so there is nothing to trust yet", err)
        self.assertIn("twistd epop --tls-cert auto", err)
        self.assertNotIn("--tls,", err)
        self.assertNothingSaved()

    async def test_which_relay(self) -> None:
        """
        Without RELAY, the saved relay; with neither, a usage error; a bad
        fingerprint too. Another RELAY than the saved one leaves it saved.
        """
        code, _, err = await self.epop("trust")
        self.assertEqual(code, 2)
        self.assertIn("say which relay", err)
        code, _, err = await self.epop("trust", "127.0.0.1", "--fingerprint", "AB:CD")
        self.assertEqual(code, 2)
        self.assertIn("not a SHA-256 fingerprint", err)
        sha1 = "SHA1 " + "AB" * 32
        code, _, err = await self.epop("trust", "127.0.0.1", "--fingerprint", sha1)
        self.assertEqual((code, err.splitlines()[0]), (2, (
            f"epop: --fingerprint: {sha1!r} is a SHA1 fingerprint: only SHA-256 fingerprints are accepted, "
            "as the relay logs them (SHA256 AB:CD:...) or openssl x509 -noout -fingerprint -sha256 prints them")))
        code, _, err = await self.epop("--lang", "fr", "trust", "127.0.0.1", "--fingerprint", "AB:CD")
        self.assertEqual(code, 2)
        self.assertIn("comme le relais l'écrit dans ses messages au démarrage (SHA256 AB:CD:...)", err)
        relay = self.relay(self.ca)
        self.assertEqual((await self.epop("config", "set", "relay", str(relay.endpoint)))[0], 0)
        code, _, err = await self.epop("trust", "--fingerprint", self.ca_fingerprint)
        self.assertEqual(code, 0, err)
        self.assertNotIn("saved relay", err)
        # Another relay than the saved one: trusted, and the saved relay is left as it is.
        code, _, err = await self.epop("trust", f"localhost:{relay.port}", "--fingerprint", self.ca_fingerprint)
        self.assertEqual(code, 0, err)
        self.assertIn(f"The saved relay is still {relay.endpoint}", err)
        self.assertIn(f"relay = {relay.endpoint}\n", (await self.epop("config", "show"))[1])


class SavedTLSSettingsTests(TestCase):
    def setUp(self) -> None:
        self.config = os.path.abspath(self.mktemp())

    async def epop(self, *argv: str) -> tuple[int, str, str]:
        stdout, stderr = io.BytesIO(), io.StringIO()
        code = await cli.run(
            reactor, list(argv), stdout=stdout, stderr=stderr,
            environ={"EPOP_CONFIG": self.config, "LANG": "C"}, stdin=io.StringIO(""),
        )
        return code, stdout.getvalue().decode(), stderr.getvalue()

    async def test_relay_ca_checked_when_set(self) -> None:
        """relay-ca must be a readable PEM certificate; a relative path is saved absolute."""
        ca = trustme.CA()
        good = self.mktemp()
        ca.cert_pem.write_to_path(good)
        key = self.mktemp()
        ca.issue_cert("x").private_key_pem.write_to_path(key)
        junk = self.mktemp()
        with open(junk, "wb") as f:
            f.write(b"not a certificate\n")
        for value, text in [
            (junk, "is not a PEM certificate"),
            (key, "is not a PEM certificate"),
            ("nothere.pem", "cannot read"),
        ]:
            code, _, err = await self.epop("config", "set", "relay-ca", value)
            self.assertEqual(code, 2, value)
            self.assertIn(text, err)
        self.assertFalse(os.path.exists(self.config))
        self.assertFalse(os.path.isabs(good))
        code, _, err = await self.epop("config", "set", "relay-ca", good)
        self.assertEqual(code, 0, err)
        code, out, _ = await self.epop("config", "show")
        self.assertIn(f"relay-ca = {os.path.abspath(good)}\n", out)

    async def test_tls_yes_or_no(self) -> None:
        """tls takes yes or no (oui and non too), and refuses anything else."""
        for typed, saved in [("yes", "yes"), ("Oui", "yes"), ("no", "no")]:
            code, _, err = await self.epop("config", "set", "tls", typed)
            self.assertEqual(code, 0, err)
            self.assertIn(f"tls = {saved}\n", (await self.epop("config", "show"))[1])
        code, _, err = await self.epop("config", "set", "tls", "maybe")
        self.assertEqual(code, 2)
        self.assertIn("tls must be 'yes' or 'no'", err)

    async def test_flags_and_saved(self) -> None:
        """Saved tls = yes encrypts without --tls; --relay-ca overrides the saved one."""
        from epop.workstation.commands import TestOptions
        from epop.workstation.settings import ClientSettings

        ca = self.mktemp()
        trustme.CA().cert_pem.write_to_path(ca)
        other = self.mktemp()
        trustme.CA().cert_pem.write_to_path(other)
        saved = ClientSettings(self.config, {"relay": "10.1.2.3", "tls": "yes", "relay-ca": ca})

        def resolved(*argv: str) -> TestOptions:
            options = TestOptions()
            options.parseOptions(list(argv))
            options.resolve(saved, {})
            return options

        self.assertEqual(resolved().tls.relay_ca, os.path.abspath(ca))
        self.assertEqual(resolved("--relay-ca", other).tls.relay_ca, other)
        saved.set("tls", "no")
        self.assertIsNone(resolved().tls)
        self.assertEqual(resolved("--tls").tls.relay_ca, os.path.abspath(ca))


class GuidanceTests(_RelayTLSCase):
    """What a workstation says when its TLS settings and the relay disagree, and how epop trust warns."""

    async def test_saved_tls_named_when_the_relay_has_none(self) -> None:
        """
        tls = yes from the saved settings, no --tls typed, a relay without
        TLS: the error names the setting and its file, not a --tls nobody typed.
        """
        relay = start_relay(self, reactor, self.sandbox.url, self.sandbox.ca_path)
        self.assertEqual((await self.epop("config", "set", "tls", "yes"))[0], 0)
        where = str(relay.endpoint)
        code, _, err = await self.epop("test", "--relay", where)
        self.assertEqual(code, 1)
        self.assertIn(
            f"The relay at {where} does not speak TLS: connect without TLS (tls = yes in the saved "
            f"settings {self.config}: epop config set tls no)", err,
        )
        code, _, err = await self.epop("--lang", "fr", "test", "--relay", where)
        self.assertIn(f"(tls = yes dans les paramètres enregistrés {self.config} : epop config set tls no)", err)
        # Typed, --tls is what to leave out.
        code, _, err = await self.epop("test", "--relay", where, "--tls")
        self.assertIn("does not speak TLS: connect without --tls,", err)
        self.assertNotIn("saved settings", err)

    async def test_unknown_authority_points_to_trust(self) -> None:
        """
        tls = yes without any relay-ca, a relay on its own authority: the
        error says to run epop trust on that relay, or set relay-ca.
        """
        relay = self.relay(self.ca)
        where = str(relay.endpoint)
        self.assertEqual((await self.epop("config", "set", "tls", "yes"))[0], 0)
        hint = f"run epop trust {where} to trust this relay's own authority, or set relay-ca to the hospital's authority"
        code, _, err = await self.epop("test", "--relay", where)
        self.assertEqual(code, 1)
        self.assertIn("signed by an unknown authority", err)
        self.assertIn(hint, err)
        code, _, err = await self.epop("--lang", "fr", "test", "--relay", where)
        self.assertIn(f"lancez epop trust {where}", err)
        # With a relay-ca, the hard error of another authority instead.
        other = self.write(trustme.CA().cert_pem.bytes())
        code, _, err = await self.epop("test", "--relay", where, "--relay-ca", other)
        self.assertEqual(code, 1)
        self.assertIn("does not trust", err)
        self.assertNotIn(hint, err)

    async def test_authority_changed(self) -> None:
        """
        As SSH does: another authority than the saved one is announced with
        a WARNING naming the old one before the question, or with
        --fingerprint; the same one is already trusted, nothing asked.
        """
        first = self.relay(self.ca)
        where = str(first.endpoint)
        code, _, err = await self.epop("trust", where, "--fingerprint", self.ca_fingerprint)
        self.assertEqual(code, 0, err)
        self.assertNotIn("WARNING", err)
        code, _, err = await self.epop("trust", where, stdin=_Terminal(""))
        self.assertEqual(code, 0, err)
        self.assertIn(f"Already trusted: {self.ca_fingerprint}.", err)
        self.assertNotIn("(yes/no)", err)
        self.assertNotIn("Settings saved", err)
        # The relay reinstalled: its tls folder, and so its authority, made anew.
        other = trustme.CA()
        other_fingerprint = fingerprint(x509.load_pem_x509_certificate(other.cert_pem.bytes()))
        second = self.relay(other)
        where = str(second.endpoint)
        warning = (
            f"WARNING: this is not the authority trusted before ({self.ca_fingerprint}, saved in "
            f"{self.trusted_file}); if the relay was not reinstalled, do not accept."
        )
        code, _, err = await self.epop("trust", where, stdin=_Terminal("no\n"))
        self.assertEqual(code, 1)
        self.assertLess(err.index(other_fingerprint), err.index(warning))
        self.assertLess(err.index(warning), err.index("(yes/no)"))
        code, _, err = await self.epop("--lang", "fr", "trust", where, stdin=_Terminal("non\n"))
        self.assertIn(f"ATTENTION : ce n'est pas l'autorité approuvée auparavant ({self.ca_fingerprint}", err)
        with open(self.trusted_file, "rb") as f:
            self.assertEqual(f.read(), self.ca.cert_pem.bytes())
        code, _, err = await self.epop("trust", where, "--fingerprint", other_fingerprint)
        self.assertEqual(code, 0, err)
        self.assertIn(warning, err)
        with open(self.trusted_file, "rb") as f:
            self.assertEqual(f.read(), other.cert_pem.bytes())

    async def test_openssl_fingerprint_output(self) -> None:
        """--fingerprint takes what openssl prints, its prefix included, and SHA-256 too."""
        relay = self.relay(self.ca)
        path = self.write(self.ca.cert_pem.bytes())
        printed = subprocess.run(
            ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", path],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        digits = printed.split("=", 1)[1]
        for typed in (printed, printed.upper(), "SHA-256 " + digits, "sha256 Fingerprint=" + digits.lower()):
            code, _, err = await self.epop("trust", str(relay.endpoint), "--fingerprint", typed)
            self.assertEqual(code, 0, (typed, err))
            os.remove(self.config)

    def intermediate_relay(self, *names: str) -> tuple[RunningRelay, str, str]:
        """A relay on a root -> intermediate -> leaf chain, sending the intermediate: the relay, the intermediate's and the leaf's files."""
        intermediate = self.ca.create_child_ca()
        relay = self.relay(intermediate, chain=intermediate.cert_pem.bytes(), names=names)
        leaf = self.write(relay.leaf_pem)  # type: ignore[attr-defined]
        return relay, self.write(intermediate.cert_pem.bytes()), leaf

    async def test_intermediate_as_relay_ca(self) -> None:
        """
        The intermediate that signs the relay's certificate is enough as
        relay-ca, flag or saved; the host name is still checked.
        """
        relay, intermediate, _ = self.intermediate_relay()
        where = str(relay.endpoint)
        code, out, err = await self.epop("test", "--relay", where, "--tls", "--relay-ca", intermediate)
        self.assertEqual(code, 0, err)
        self.assertIn("Encrypted (TLS", out)
        for key, value in (("relay-ca", intermediate), ("tls", "yes"), ("relay", where)):
            self.assertEqual((await self.epop("config", "set", key, value))[0], 0)
        code, out, err = await self.epop("test")
        self.assertEqual(code, 0, err)
        elsewhere, intermediate, _ = self.intermediate_relay("relay.chu.local")
        code, _, err = await self.epop("test", "--relay", str(elsewhere.endpoint), "--tls", "--relay-ca", intermediate)
        self.assertEqual(code, 1)
        self.assertIn("does not match the host name", err)

    async def test_server_certificate_refused_as_relay_ca(self) -> None:
        """The relay's own certificate given as relay-ca is refused when set or typed, saying what to give."""
        relay, _, leaf = self.intermediate_relay()
        said = (
            f"{os.path.abspath(leaf)} is a server's certificate, not an authority: give the authority "
            "that signs it (for a relay on --tls-cert auto: epop trust)"
        )
        code, _, err = await self.epop("config", "set", "relay-ca", leaf)
        self.assertEqual(code, 2)
        self.assertIn(f"relay-ca: {said}", err)
        self.assertFalse(os.path.exists(self.config))
        code, _, err = await self.epop("test", "--relay", str(relay.endpoint), "--tls", "--relay-ca", os.path.abspath(leaf))
        self.assertEqual(code, 2)
        self.assertIn(f"--relay-ca: {said}", err)
