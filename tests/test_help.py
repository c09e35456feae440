"""
C{--help} in the reader's language: every help string of every command has
a French translation, and C{epop} and C{twistd epop} print their option
tables in French when C{--lang fr} or the locale says so.
"""

from __future__ import annotations

import os
import subprocess

from babel.messages.pofile import read_po
from twisted.python import usage
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from epop import cli
from epop.command import CommandOptions
from epop.help import help_strings
from epop.relay import tap
from tests.test_cli_interrupt import epop_command
from tests.test_messages import PO
from tests.test_twistd_start import run_foreground_twistd

#: A French locale, whatever the tests' own environment says.
FRENCH = {"LC_ALL": "", "LC_MESSAGES": "", "LANG": "fr_FR.UTF-8"}
ENGLISH = {"LC_ALL": "", "LC_MESSAGES": "", "LANG": "C.UTF-8"}


def untranslated(options: usage.Options) -> list[str]:
    """The help strings of C{options} and its subcommands that the French catalog lacks."""
    with open(PO, "rb") as f:
        catalog = read_po(f)
    translated = {message.id for message in catalog if message.id and message.string}
    return sorted(set(help_strings(options)) - translated)


class _Unknown(CommandOptions):
    synopsis = "WIDGET"
    optFlags = [["frobnicate", None, "Frobnicate the widget before sending it."]]


class _WithUnknown(CommandOptions):
    subCommands = [["widget", None, _Unknown, "Handle widgets."]]


class CatalogTests(SynchronousTestCase):
    def test_every_epop_help_string_translated(self) -> None:
        """Each synopsis, description and option of epop and its subcommands has a French translation."""
        self.assertEqual(untranslated(cli.Options()), [])

    def test_every_twistd_epop_help_string_translated(self) -> None:
        """Each description and option of twistd epop has a French translation."""
        self.assertEqual(untranslated(tap.Options()), [])

    def test_an_untranslated_string_is_found(self) -> None:
        """A new option, subcommand or synopsis without translation fails the check, however deep."""
        self.assertEqual(
            untranslated(_WithUnknown()),
            ["Frobnicate the widget before sending it.", "Handle widgets.", "WIDGET"],
        )


def _epop(*argv: str, environ: dict[str, str]) -> str:
    """What C{epop ARGV} prints on standard output, after it exits 0."""
    done = subprocess.run(
        [*epop_command(), *argv], capture_output=True, timeout=60, env={**os.environ, **environ}
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.decode()


class EpopHelpTests(SynchronousTestCase):
    """The real program, as a person types it."""

    def assertFrenchSendHelp(self, text: str) -> None:
        words = " ".join(text.split())
        self.assertTrue(text.startswith("Utilisation : epop send FICHIER [--relay HÔTE[:PORT]"), text)
        self.assertIn("Options :", words)
        self.assertIn("--relay= L'adresse du relais : HÔTE ou HÔTE:PORT (port 3358 par défaut).", words)
        self.assertIn("[par défaut : theFile]", words)
        self.assertIn("Afficher cette aide et quitter.", words)
        self.assertIn("pour un mot de passe, utilisez -F userPwd=<FICHIER", words)
        self.assertNotIn("default", words)

    def test_lang_before_the_command(self) -> None:
        """`epop --lang fr send --help`: the send command's help in French, whatever the locale."""
        self.assertFrenchSendHelp(_epop("--lang", "fr", "send", "--help", environ=ENGLISH))

    def test_french_locale(self) -> None:
        """`LANG=fr_FR.UTF-8 epop send --help`: in French."""
        self.assertFrenchSendHelp(_epop("send", "--help", environ=FRENCH))

    def test_lang_en_wins_over_the_locale(self) -> None:
        """`epop --lang en send --help` in a French locale: in English."""
        text = _epop("--lang", "en", "send", "--help", environ=FRENCH)
        self.assertTrue(text.startswith("Usage: epop send FILE"), text)
        self.assertIn("[default: theFile]", " ".join(text.split()))

    def test_commands_in_french(self) -> None:
        """`epop --help`: the commands' summaries and the headings in French."""
        text = _epop("--help", environ=FRENCH)
        self.assertTrue(text.startswith("Utilisation : epop [--lang fr|en] COMMANDE ...\nOptions :\n"), text)
        self.assertIn("\nCommandes :\n", text)
        self.assertIn("Envoyer un fichier à e-PMSI.", text)
        self.assertIn("Envoyer des fichiers PMSI à e-PMSI, directement ou par un relais e-POP.", text)

    def test_since_in_french(self) -> None:
        """`epop journal --help` in French shows the forms --since takes (tests.test_cli_french), no "il y a"."""
        words = " ".join(_epop("journal", "--help", environ=FRENCH).split())
        self.assertIn(
            "--since= Seulement les événements à partir de ce moment : 2026-11-25, 2026-11-25T08:30 (heure locale), "
            "aujourd'hui (ou today), hier (ou yesterday), ou une durée avant maintenant : 30m, 1h, 2j (ou 2d).",
            words,
        )
        for command in ("journal", "connections"):
            self.assertNotIn("il y a", _epop(command, "--help", environ=FRENCH))

    def test_top_synopsis(self) -> None:
        """`epop --help` starts with where --lang goes and that a command follows."""
        text = _epop("--help", environ=ENGLISH)
        self.assertTrue(text.startswith("Usage: epop [--lang fr|en] COMMAND ...\nOptions:\n"), text)

    def test_nested_command_in_french(self) -> None:
        """`epop config --help`: its own subcommands in French too."""
        text = _epop("config", "--help", environ=FRENCH)
        self.assertIn("Utilisation : epop config (show | path | set CLÉ VALEUR | unset CLÉ)", text)
        self.assertIn("Enregistrer un paramètre.", text)


    def test_trust_says_where_the_fingerprint_is(self) -> None:
        """`epop trust --help` in French names the place its errors name: the relay's messages at start."""
        words = " ".join(_epop("trust", "--help", environ=FRENCH).split())
        self.assertIn(
            "Comparez l'empreinte avec celle que le relais écrit dans ses messages à son démarrage "
            "(pas dans le journal des connexions).",
            words,
        )

    def test_help_of_a_nested_command(self) -> None:
        """`epop config set --help`: the help of set (its keys), not of config, its synopsis from the command's name."""
        text = _epop("config", "set", "--help", environ=ENGLISH)
        self.assertTrue(text.startswith("Usage: epop config set KEY VALUE\n"), text)
        self.assertIn("Save one setting. Keys:", " ".join(text.split()))
        text = _epop("config", "unset", "--help", environ=FRENCH)
        self.assertTrue(text.startswith("Utilisation : epop config unset CLÉ\n"), text)

    def test_usage_error_of_a_nested_command(self) -> None:
        """`epop config set relay`: the arguments expected, and the help to read is that of `epop config set`."""
        done = subprocess.run(
            [*epop_command(), "config", "set", "relay"],
            capture_output=True, timeout=60, env={**os.environ, **ENGLISH, "EPOP_CONFIG": self.mktemp()},
        )
        self.assertEqual((done.returncode, done.stdout), (2, b""))
        self.assertEqual(
            done.stderr.decode(),
            "epop: wrong number of arguments: epop config set KEY VALUE\nTry 'epop config set --help'.\n",
        )
        done = subprocess.run(
            [*epop_command(), "journal", "a", "b"], capture_output=True, timeout=60, env={**os.environ, **FRENCH}
        )
        self.assertEqual(done.returncode, 2)
        self.assertTrue(done.stderr.decode().startswith("epop: nombre d'arguments incorrect : epop journal [CHEMIN]"), done.stderr)


class TwistdHelpTests(SynchronousTestCase):
    """`twistd epop --help`, run for real."""

    def help(self, *options: str, environ: dict[str, str]) -> str:
        folder = FilePath(self.mktemp())
        folder.makedirs()
        code, output = run_foreground_twistd(folder, *options, "--help", environ=environ)
        self.assertEqual(code, 0, output)
        return output

    def test_french_locale(self) -> None:
        """In a French locale, the relay's options are described in French."""
        text = self.help(environ=FRENCH)
        words = " ".join(text.split())
        self.assertTrue(text.startswith("Utilisation : twistd [options] epop [options]\nOptions :\n"), text)
        self.assertIn("--no-check Ne pas vérifier au démarrage qu'e-PMSI est joignable.", words)
        self.assertIn("[par défaut : epop-journal.jsonl]", words)
        self.assertIn("Lancer un relais e-POP", words)
        self.assertNotIn("default", words)

    def test_lang_option(self) -> None:
        """`twistd epop --lang fr --help` in an English locale: in French."""
        self.assertIn("Afficher la version de Twisted et quitter.", self.help("--lang", "fr", environ=ENGLISH))

    def test_english(self) -> None:
        """In an English locale, the help is as the code declares it."""
        text = self.help(environ=ENGLISH)
        self.assertTrue(text.startswith("Usage: twistd [options] epop [options]\nOptions:\n"), text)
        words = " ".join(text.split())
        self.assertIn("--no-check Do not check at start-up that e-PMSI can be reached.", words)
        self.assertIn("[default: epop-journal.jsonl]", words)


class WrappingTests(SynchronousTestCase):
    """How an option table is wrapped and its defaults written, in-process, at several widths."""

    def usage_of(self, options: usage.Options, language: str, width: int) -> str:
        options["lang"] = language
        options.language = language  # twistd epop's, from --lang or the locale when parsed
        return options.getUsage(width=width)

    def pages(self, language: str) -> list[str]:
        return [
            self.usage_of(parser, language, width)
            for width in (60, 80, 100, 120)
            for parser in (tap.Options(), *(make() for _, _, make, _ in cli.Options.subCommands))
        ]

    def test_no_line_starts_with_french_punctuation(self) -> None:
        """French help never leaves ":", ";", "?", "!" or "»" at the start of a line, nor "«" at its end."""
        for page in self.pages("fr"):
            for line in page.splitlines():
                self.assertNotRegex(line, r"^\s*[:;?!»]", page)
                self.assertNotRegex(line, r"«\s*$", page)

    def test_options_never_cut_at_a_hyphen(self) -> None:
        """--tls-cert, --tls-client-key and e-PMSI stay whole, in French and in English."""
        for language in ("fr", "en"):
            for page in self.pages(language):
                self.assertNotRegex(page, r"\w-\n", page)
                self.assertNotIn("\ue000", page)
                self.assertNotIn("\ue001", page)

    def test_defaults_as_written(self) -> None:
        """Numbers are shown as they were given: 1024 and 360, not 1024.0 and 360.0."""
        relay = " ".join(self.usage_of(tap.Options(), "fr", 80).split())
        self.assertIn("(0 : pas de minimum). [par défaut : 1024]", relay)
        self.assertIn("[par défaut : 120]", relay)
        self.assertNotRegex(relay, r"défaut : \d+\.0\]")
        relay = " ".join(self.usage_of(tap.Options(), "en", 80).split())
        self.assertIn("(0: no minimum). [default: 1024]", relay)
        self.assertNotRegex(relay, r"default: \d+\.0\]")
        send = dict((name, make) for name, _, make, _ in cli.Options.subCommands)["send"]
        self.assertIn("[par défaut : 360]", " ".join(self.usage_of(send(), "fr", 80).split()))
