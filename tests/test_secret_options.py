"""
Options that take a secret or its file are never abbreviated, and their
errors never repeat the value given: C{--proxy-password s3cret} must not be
read as C{--proxy-password-file s3cret} and then printed back.
"""

from __future__ import annotations

import io
import os

from twisted.internet import reactor
from twisted.python import usage
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase

from epop import cli
from epop.relay import tap
from tests.test_twistd_start import run_foreground_twistd

SECRET = "s3cret-Hunter2"


class RelayAbbreviationTests(SynchronousTestCase):
    """C{twistd epop}'s options, parsed as twistd parses them."""

    def refused(self, *arguments: str) -> str:
        options = tap.Options()
        error = self.assertRaises(usage.UsageError, options.parseOptions, list(arguments))
        message = str(error)
        self.assertNotIn(SECRET, message)
        return message

    def test_abbreviations_refused(self) -> None:
        """Each secret option, abbreviated with a separate value or with C{=}: refused by its full name."""
        for typed, full in [
            ("--proxy-password", "--proxy-password-file"),
            ("--proxy-pass", "--proxy-password-file"),
            ("--console-password", "--console-password-file"),
            ("--tunnel-user", "--tunnel-users"),
            ("--tls-ke", "--tls-key"),
        ]:
            for arguments in ([typed, SECRET], [f"{typed}={SECRET}"]):
                with self.subTest(arguments=arguments):
                    message = self.refused("--no-check", "--console", "none", *arguments)
                    self.assertEqual(
                        message,
                        f"{typed} is not an option: write {full} in full (an option that takes "
                        "a password, a key or the file of one is never abbreviated; its value "
                        "is not repeated here)",
                    )

    def test_prefix_of_two_secrets(self) -> None:
        """A prefix of two secret options names both."""
        message = self.refused("--t", SECRET)
        self.assertIn("write --tunnel-users or --tls-key in full", message)

    def test_value_looking_like_an_option(self) -> None:
        """The value of another option is a value, even when it reads like an abbreviation."""
        password = FilePath(self.mktemp())
        password.setContent(b"pw\n")
        options = tap.Options()
        options.parseOptions([
            "--no-check", "--console", "none", "--journal", self.mktemp(),
            "--proxy", "http://proxy.example:3128", "--proxy-user", "--proxy-password",
            "--proxy-password-file", password.path,
        ])
        assert options.proxy is not None
        self.assertEqual((options.proxy.user, options.proxy.password), ("--proxy-password", "pw"))

    def test_other_abbreviations_still_work(self) -> None:
        """Options without a secret keep getopt's prefixes (existing scripts use them)."""
        options = tap.Options()
        options.parseOptions(["--no-chec", "--console", "none", "--journal-kee", "3", "--journal", self.mktemp()])
        self.assertEqual(options.settings().journal_keep, 3)

    def test_missing_files_not_repeated(self) -> None:
        """A secret option given in full whose value is no file: the error does not repeat it."""
        hint = (
            f" (a relative name is read from {os.getcwd()}; the name given is not repeated here, "
            "in case it is a password typed by mistake)"
        )
        for arguments, expected in [
            (["--proxy", "http://proxy.example:3128", "--proxy-user", "dim", "--proxy-password-file", SECRET],
             "--proxy-password-file: cannot read the proxy password file given: No such file or directory" + hint),
            (["--console-password-file", SECRET],
             "--console-password-file: cannot read the console password file given: No such file or directory"),
            (["--tunnel-users", SECRET],
             "--tunnel-users: cannot read the users file given: No such file or directory" + hint),
        ]:
            with self.subTest(arguments=arguments):
                message = self.refused("--no-check", "--journal", self.mktemp(), *arguments)
                self.assertEqual(message, expected)

    def test_unreadable_files_named(self) -> None:
        """A secret option's file that exists but cannot be read is named, with the system's reason."""
        folder = FilePath(self.mktemp())
        folder.makedirs()
        for arguments, expected in [
            (["--proxy", "http://proxy.example:3128", "--proxy-user", "dim", "--proxy-password-file", folder.path],
             f"--proxy-password-file: cannot read the proxy password file {folder.path}: Is a directory"),
            (["--tunnel-users", folder.path],
             f"--tunnel-users: cannot read the users file {folder.path}: Is a directory"),
        ]:
            with self.subTest(arguments=arguments):
                options = tap.Options()
                error = self.assertRaises(
                    usage.UsageError, options.parseOptions, ["--no-check", "--journal", self.mktemp(), *arguments]
                )
                self.assertEqual(str(error), expected)


class WorkstationAbbreviationTests(TestCase):
    """C{epop send} and C{epop test} refuse the same abbreviations."""

    async def test_refused(self) -> None:
        config = FilePath(self.mktemp())
        for argv in (
            ["send", "--direct", "--proxy-password", SECRET, "file.txt"],
            ["test", "--direct", f"--proxy-pass={SECRET}"],
            ["send", "file.txt", "--tls", "--tls-client-ke", SECRET],
        ):
            stdout, stderr = io.BytesIO(), io.StringIO()
            code = await cli.run(
                reactor, argv, stdout=stdout, stderr=stderr, environ={"EPOP_CONFIG": config.path}
            )
            self.assertEqual(code, 2, stderr.getvalue())
            self.assertNotIn(SECRET, stderr.getvalue() + stdout.getvalue().decode())
            self.assertIn("in full", stderr.getvalue())


class TwistdAbbreviationTests(SynchronousTestCase):
    """The real C{twistd epop}: the password reaches neither output."""

    def test_twistd_does_not_print_the_password(self) -> None:
        folder = FilePath(self.mktemp())
        folder.makedirs()
        code, output = run_foreground_twistd(folder, "--no-check", "--console=none", "--proxy-password", SECRET)
        self.assertNotEqual(code, 0, output)
        self.assertIn("--proxy-password is not an option: write --proxy-password-file in full", output)
        self.assertNotIn(SECRET, output)
        self.assertFalse(folder.child("twistd.pid").exists())
