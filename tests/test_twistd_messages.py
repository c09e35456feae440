"""
Everything C{twistd epop} says to a person is in French when the locale or
C{--lang} asks for it: usage errors (the option parser's own included),
settings-file errors, start-up failures, and the C{settings-reloaded}
journal text that C{epop journal} shows.  English stays as it was.

The guard at the end reads the relay's sources and fails when a message
for a person is written as a plain English string again instead of a
L{Text}.
"""

from __future__ import annotations

import socket
import textwrap
from pathlib import Path

from twisted.application.service import Service
from twisted.internet import reactor
from twisted.python import usage
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase

from epop.errors import RelayCannotStart
from epop.messages import Text, reason_of
from epop.relay import tap
from epop.relay.service import ListenError, ReloadRefused
from tests.relaying import start_relay
from tests.support import make_trustme_sandbox
from tests.test_cli import run_epop
from tests.test_message_sources import PACKAGE, plain_messages
from tests.test_twistd_start import run_foreground_twistd

FRENCH = {"LANG": "fr_FR.UTF-8", "LC_ALL": "", "LC_MESSAGES": ""}
ENGLISH = {"LANG": "C.UTF-8", "LC_ALL": "", "LC_MESSAGES": ""}


class TwistdUsageErrorTests(TestCase):
    """A real C{twistd -n epop} with a mistake: the reason in the administrator's language."""

    def setUp(self) -> None:
        self.folder = FilePath(self.mktemp())
        self.folder.makedirs()
        settings = self.folder.child("relay.ini")
        settings.setContent(b"[epop]\nidle-timeout = soon\n")
        #: Each mistake, its French reason and its English one.
        self.mistakes = [
            (("--bogus",), "option --bogus inconnue", "option --bogus not recognized"),
            (
                ("--ca-file", "nothere.pem"),
                "impossible de lire le fichier d'autorité (CA) nothere.pem : Aucun fichier ou dossier de ce nom",
                "cannot read CA file nothere.pem: No such file or directory",
            ),
            (
                ("--listen", "foo:bar"),
                "--listen foo:bar : point d'écoute invalide (type de point d'écoute inconnu 'foo' : attendu",
                "--listen foo:bar: invalid endpoint (unknown endpoint type 'foo': expected",
            ),
            (
                ("--config", settings.path),
                f"{settings.path}, ligne 2 : idle-timeout : attendu un nombre de secondes positif, et non 'soon'",
                f"{settings.path}, line 2: idle-timeout: expected a positive number of seconds, not 'soon'",
            ),
            (("--tls-key", "relay.key"), "--tls-key nécessite --tls-cert", "--tls-key needs --tls-cert"),
        ]

    def twistd(self, *options: str, environ: dict[str, str]) -> str:
        code, output = run_foreground_twistd(self.folder, "--console=none", *options, environ=environ)
        self.assertEqual(code, 1, output)
        self.assertNotIn("Traceback", output)
        return output

    def test_french_locale(self) -> None:
        """LANG=fr_FR.UTF-8: each reason, and the line before it, in French."""
        for options, french, english in self.mistakes:
            output = self.twistd(*options, environ=FRENCH)
            self.assertIn(french, output)
            self.assertNotIn(english, output)
            self.assertIn("La raison suit ; 'twistd epop --help' liste toutes les options.", output)
            self.assertTrue(output.startswith("Utilisation : twistd [options]\n"), output)

    def test_lang_option(self) -> None:
        """--lang fr in an English locale, and --lang en in a French one."""
        for options, french, english in self.mistakes:
            self.assertIn(french, self.twistd("--lang", "fr", *options, environ=ENGLISH))
        options, french, english = self.mistakes[1]
        output = self.twistd("--lang=en", *options, environ=FRENCH)
        self.assertIn(english, output)
        self.assertNotIn(french, output)

    def test_english_unchanged(self) -> None:
        """An English locale: the same words as before, one line of usage then the reason."""
        for options, french, english in self.mistakes:
            output = self.twistd(*options, environ=ENGLISH)
            self.assertIn(english, output)
            self.assertIn("The reason follows; 'twistd epop --help' lists every option.", output)
            self.assertTrue(output.startswith("Usage: twistd [options]\n"), output)

    def test_port_in_use(self) -> None:
        """A start-up failure, the port taken, is told in French on the terminal."""
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code, output = run_foreground_twistd(
            self.folder,
            "--console=none",
            "--no-check",
            f"--listen=tcp:{port}:interface=127.0.0.1",
            f"--journal={self.folder.child('journal.jsonl').path}",
            environ=FRENCH,
        )
        self.assertEqual(code, 1, output)
        self.assertIn(
            f"epop: impossible d'écouter sur tcp:{port}:interface=127.0.0.1 : Adresse déjà utilisée "
            "(un autre relais ou programme y écoute-t-il déjà ?)",
            output,
        )


class OptionsLanguageTests(SynchronousTestCase):
    """The language is chosen before the options are read, and kept for what follows."""

    def refused(self, *arguments: str) -> tap.Refused:
        return self.assertRaises(tap.Refused, tap.Options().parseOptions, list(arguments))

    def test_reason_keeps_its_text(self) -> None:
        """str() is in the chosen language; args[0] is the Text, for any other reader."""
        error = self.refused("--lang", "fr", "--tls-chain", "chain.pem")
        self.assertEqual(str(error), "--tls-chain nécessite --tls-cert")
        self.assertEqual(reason_of(error).render("en"), "--tls-chain needs --tls-cert")

    def test_settings_file_language(self) -> None:
        """lang = fr in the settings file: the mistakes found after it are in French."""
        path = self.mktemp()
        Path(path).write_text("[epop]\nlang = fr\nrequire-tls = yes\n", encoding="utf-8")
        error = self.refused("--config", path, "--journal", self.mktemp())
        self.assertEqual(str(error), f"{Path(path).resolve()}, ligne 3 : require-tls : nécessite tls-cert et tls-key")

    def test_bad_language(self) -> None:
        """--lang takes fr or en; the mistake is said in the locale's language."""
        error = self.refused("--lang", "de")
        self.assertEqual(reason_of(error).render("en"), "--lang: expected fr or en, not 'de'")

    def test_checks_of_other_modules(self) -> None:
        """Values checked outside tap.py (files, proxy, allowlist, journal, console) are refused in French too."""
        journal = ["--journal", self.mktemp()]
        cases = [
            (
                ["--tunnel-users", "/nonexistent/users"],
                "--tunnel-users : impossible de lire le fichier des utilisateurs donné : "
                "Aucun fichier ou dossier de ce nom",
            ),
            (
                ["--proxy", "ftp://proxy.example:3128"],
                "--proxy : proxy 'ftp://proxy.example:3128' : seuls les proxys http:// sont pris en charge",
            ),
            (["--allow", "10.1.2.300"], "--allow : '10.1.2.300' n'est ni une adresse IP ni un réseau"),
            (["--journal-rotate", "weekly"], "--journal-rotate : attendu 'daily' ou une taille"),
            (["--epmsi", "http://e-pmsi.example"], "l'URL d'e-PMSI doit commencer par https:// (reçu 'http://e-pmsi.example')"),
            (["--console", "tcp:3359"], "--console : la console écoute sur"),
        ]
        for arguments, french in cases:
            error = self.refused("--lang", "fr", *journal, *arguments)
            self.assertTrue(str(error).startswith(french), str(error))

    def test_usage_line(self) -> None:
        """The one line of usage twistd prints before the reason follows the language too."""
        options = tap.Options()
        self.assertRaises(usage.UsageError, options.parseOptions, ["--lang", "fr", "--idle-timeout", "soon"])
        self.assertEqual(options.getUsage(), "La raison suit ; 'twistd epop --help' liste toutes les options.\n")


class ListenErrorTests(SynchronousTestCase):
    """The system's reason is translated with the rest; str() stays English."""

    def test_addresses(self) -> None:
        error = ListenError("tcp:3358:interface=10.9.9.9", Text("Cannot assign requested address"), [])
        self.assertEqual(
            error.text.render("fr"),
            "impossible d'écouter sur tcp:3358:interface=10.9.9.9 : Impossible d'attribuer l'adresse "
            "demandée ; les adresses de cette machine sont : aucune ; voir epop interfaces",
        )
        self.assertEqual(
            str(error),
            "cannot listen on tcp:3358:interface=10.9.9.9: Cannot assign requested address; "
            "this machine's addresses are: none; see epop interfaces",
        )


    def test_daemon_reason_unaccented(self) -> None:
        """The reason a detaching twistd passes to its parent (printed as bytes) is French without accents."""

        class Taken(Service):
            def privilegedStartService(self) -> None:
                raise ListenError("tcp:3358", Text("Address already in use"))

        top = tap._TwistdRelay(None, "fr")
        Taken().setServiceParent(top)
        error = self.assertRaises(RelayCannotStart, top.privilegedStartService)
        self.assertEqual(str(error), "impossible d'ecouter sur tcp:3358 : Adresse deja utilisee")


class SettingsReloadedTests(TestCase):
    """The settings-reloaded text: English in the journal file, French in a French epop journal."""

    async def test_epop_journal_in_french(self) -> None:
        sandbox = make_trustme_sandbox(self, reactor)
        journal = self.mktemp()
        relay = start_relay(self, reactor, sandbox.url, sandbox.ca_path, file_journal=True, journal=journal)
        relay.service.set_allowlist(["10.0.0.0/8"], source="/etc/epop/relay.ini")

        def refused() -> list[str]:
            raise ReloadRefused(
                Text("--allow is given on the command line, which overrides the settings file"),
                error="allow-on-command-line",
            )

        self.assertFalse(relay.service.reload_allowlist(refused, source="/etc/epop/relay.ini"))
        records = relay.records("settings-reloaded")
        self.assertEqual(
            [r["description"] for r in records],
            [
                "Settings reloaded from /etc/epop/relay.ini: clients allowed: 10.0.0.0/8",
                "Settings not reloaded from /etc/epop/relay.ini: --allow is given on the command line, "
                "which overrides the settings file; clients allowed are still: 10.0.0.0/8",
            ],
        )
        code, out, err = await run_epop(self.mktemp(), "journal", journal, environ={"LANG": "fr_FR.UTF-8"})
        self.assertEqual(code, 0, err)
        shown = out.decode()
        self.assertIn("Paramètres rechargés depuis /etc/epop/relay.ini : postes autorisés : 10.0.0.0/8", shown)
        self.assertIn(
            "Paramètres non rechargés depuis /etc/epop/relay.ini : --allow est donné sur la ligne de "
            "commande, qui l'emporte sur le fichier de paramètres ; les postes autorisés restent : 10.0.0.0/8",
            shown,
        )
        code, out, err = await run_epop(self.mktemp(), "journal", journal, environ={"LANG": "C.UTF-8"})
        self.assertIn("Settings reloaded from /etc/epop/relay.ini: clients allowed: 10.0.0.0/8", out.decode())


# The guard: tests.test_message_sources scans twistd epop's modules with the
# others; here, that it would catch one English f-string put back.


class GuardTests(SynchronousTestCase):
    def test_an_english_string_put_back_fails(self) -> None:
        """The scan finds one English f-string put back in tap.py, and each relay-side shape of one."""
        source = (PACKAGE / "relay" / "tap.py").read_text(encoding="utf-8")
        translated = 'Text("cannot write in {folder}", folder=folder)'
        self.assertIn(translated, source)
        self.assertEqual(plain_messages(source), [])
        found = plain_messages(source.replace(translated, 'f"cannot write in {folder}"'))
        self.assertEqual(len(found), 1, found)
        shapes = textwrap.dedent(
            """
            raise self._refuse("journal", "cannot write")
            raise ListenError(description, f"cannot listen: {why}")
            raise ReloadRefused("--allow is given on the command line", error="allow-on-command-line")
            raise RelayCannotStart(f"cannot listen on {e.description}")
            raise ValueLineError(f"{key}: bad", index)
            raise self._refuse("tls-cert", Text("needs {option}"), "tls-key")
            """
        )
        self.assertEqual([line for line, _ in plain_messages(shapes)], [2, 3, 4, 5, 6])
