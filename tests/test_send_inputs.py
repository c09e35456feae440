"""
C{epop send} and what it is given: a folder or an empty file instead of
the file, the defaults that fit e-PMSI's upload form, and form values read
from a file or standard input (a password kept off the command line).
Run in-process against a real relay and sandbox, or a real HTTPS server
that keeps the bodies it gets, on loopback.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

import trustme
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from epop.sandbox.ca import server_tls_options
from epop.workstation import form_fields
from tests.relaying import start_relay
from tests.support import make_trustme_sandbox, poll_until, write_random_file
from tests.test_cli import run_epop

SECRET = "s3cret-Pwd!"


class _KeepBodies(Resource):
    """e-PMSI's upload form as far as these tests need: every body it got."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        self.bodies.append(request.content.read())
        return b'{"status": "received"}'


class _TrackedSite(Site):
    """A site whose connections the test closes, for a clean reactor."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource)
        self.channels: set[Any] = set()

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        lost = channel.connectionLost

        def connectionLost(reason: Any) -> None:
            self.channels.discard(channel)
            lost(reason)

        channel.connectionLost = connectionLost
        self.channels.add(channel)
        return channel


class SendInputTests(TestCase):
    def setUp(self) -> None:
        self.sandbox = make_trustme_sandbox(self, reactor)
        self.relay = start_relay(self, reactor, self.sandbox.url, self.sandbox.ca_path)
        self.config_path = os.path.abspath(self.mktemp())
        self.path = self.mktemp()
        write_random_file(self.path, 4096, seed=3)

    async def send(self, *argv: str, stdin: io.StringIO | None = None) -> tuple[int, bytes, str]:
        return await run_epop(self.config_path, *argv, stdin=stdin)

    def empty_file(self) -> str:
        path = self.mktemp()
        open(path, "wb").close()
        return path

    async def test_folder_is_named_a_folder(self) -> None:
        """A folder given as the file: 'is a folder', in English and French, status 2."""
        folder = os.path.abspath(self.mktemp())
        os.mkdir(folder)
        for language, message in (
            ("en", f"epop: {folder} is a folder: give the file to send\n"),
            ("fr", f"epop: {folder} est un dossier : donnez le fichier à envoyer\n"),
        ):
            code, out, err = await self.send("--lang", language, "send", folder, "--relay", str(self.relay.endpoint))
            self.assertEqual((code, out), (2, b""), err)
            self.assertTrue(err.startswith(message), err)
            self.assertNotIn("no such file", err)
        self.assertEqual(self.relay.records("object-instantiated"), [])

    async def test_empty_file_is_refused(self) -> None:
        """An empty file is not sent without --allow-empty, and the message says how, in French too."""
        path = self.empty_file()
        code, out, err = await self.send("send", path, "--relay", str(self.relay.endpoint))
        self.assertEqual((code, out), (2, b""), err)
        self.assertIn(f"{path} is empty (0 bytes): check it is the right file, or send it anyway with --allow-empty", err)
        code, out, err = await self.send("--lang", "fr", "send", path, "--relay", str(self.relay.endpoint))
        self.assertEqual((code, out), (2, b""), err)
        self.assertIn(f"{path} est vide (0 octet) : vérifiez que c'est le bon fichier", err)
        self.assertEqual(self.relay.records("object-instantiated"), [])

    async def test_empty_file_sent_with_allow_empty(self) -> None:
        """--allow-empty sends it, with a warning on standard error; e-PMSI gets 0 bytes."""
        path = self.empty_file()
        for language, warning in (
            ("en", f"epop: warning: {path} is empty (0 bytes); sending it as --allow-empty asks.\n"),
            ("fr", f"epop: attention : {path} est vide (0 octet) ; il est envoyé comme --allow-empty le demande.\n"),
        ):
            code, out, err = await self.send(
                "--lang", language, "send", path, "--allow-empty", "--relay", str(self.relay.endpoint)
            )
            self.assertEqual(code, 0, err)
            self.assertTrue(err.startswith(warning), err)
            self.assertEqual(json.loads(out)["files"][0]["size"], 0)

    async def test_defaults_fit_epmsi_upload_form(self) -> None:
        """Without --to and --field, the file goes to /syriusUpload.do as theFile; flags still win."""
        code, out, err = await self.send("send", self.path, "--relay", str(self.relay.endpoint))
        self.assertEqual(code, 0, err)
        receipt = json.loads(out)
        self.assertEqual((receipt["path"], receipt["files"][0]["field"]), ("/syriusUpload.do", "theFile"))
        code, out, err = await self.send(
            "send", self.path, "--relay", str(self.relay.endpoint), "--field", "other", "--to", "/other.do"
        )
        self.assertEqual(code, 0, err)
        receipt = json.loads(out)
        self.assertEqual((receipt["path"], receipt["files"][0]["field"]), ("/other.do", "other"))

    async def test_help_says_how_to_give_a_password(self) -> None:
        """--help names the defaults and the way to pass a password."""
        import sys

        out = io.StringIO()
        self.patch(sys, "stdout", out)
        with self.assertRaises(SystemExit):
            await self.send("send", "--help")
        text = " ".join(out.getvalue().split())
        self.assertIn("for a password, use -F userPwd=<FILE", text)
        self.assertIn("[default: theFile]", text)
        self.assertIn("[default: /syriusUpload.do]", text)

    def start_epmsi(self) -> tuple[str, str, _KeepBodies]:
        """A real HTTPS server that keeps the bodies it gets: its URL, its CA file, the bodies."""
        ca = trustme.CA()
        server = ca.issue_cert("127.0.0.1")
        ca_path = os.path.abspath(self.mktemp())
        ca.cert_pem.write_to_path(ca_path)
        resource = _KeepBodies()
        site = _TrackedSite(resource)
        options = server_tls_options(
            b"".join(pem.bytes() for pem in server.cert_chain_pems), server.private_key_pem.bytes()
        )
        port = reactor.listenSSL(0, site, options, interface="127.0.0.1")

        async def close() -> None:
            await port.stopListening()
            for channel in list(site.channels):
                channel.transport.abortConnection()
            self.assertTrue(await poll_until(reactor, lambda: not site.channels))

        self.addCleanup(lambda: Deferred.fromCoroutine(close()))
        return f"https://127.0.0.1:{port.getHost().port}", ca_path, resource

    async def test_value_from_file_and_stdin_reaches_epmsi(self) -> None:
        """-F userPwd=<FILE and -F userPwd=<- send the first line, without its line end."""
        url, ca_path, epmsi = self.start_epmsi()
        secret_file = self.mktemp()
        with open(secret_file, "w") as f:
            f.write(SECRET + "\r\nsecond line\n")
        direct = ("--direct", "--epmsi", url, "--ca-file", ca_path)
        code, _, err = await self.send("send", self.path, *direct, "-F", "userId=dim", "-F", f"userPwd=<{secret_file}")
        self.assertEqual(code, 0, err)
        code, _, err = await self.send(
            "send", self.path, *direct, "-F", "userPwd=<-", stdin=io.StringIO(SECRET + "\nnot this\n")
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(len(epmsi.bodies), 2)
        for body in epmsi.bodies:
            self.assertIn(b'name="userPwd"\r\n\r\n' + SECRET.encode() + b"\r\n--", body)
            self.assertNotIn(b"second line", body)
            self.assertNotIn(b"not this", body)
            self.assertIn(b'name="theFile"', body)
        self.assertIn(b'name="userId"\r\n\r\ndim\r\n', epmsi.bodies[0])

    async def at_the_password_prompt(self, key: type[BaseException], *argv: str) -> tuple[int, bytes, str]:
        """C{epop ARGV send ... -F userPwd=<-} on a terminal where the person presses C{key} at the prompt."""
        class Terminal(io.StringIO):
            def isatty(self) -> bool:
                return True

        def pressed(prompt: str) -> str:
            raise key()

        self.patch(form_fields.getpass, "getpass", pressed)
        code, out, err = await self.send(*argv, "send", self.path, "--relay", str(self.relay.endpoint),
                                         "-F", "userPwd=<-", stdin=Terminal())
        self.assertNotIn("Traceback", err)
        return code, out, err

    async def test_password_prompt_says_it_is_not_shown(self) -> None:
        """The terminal's prompt for -F userPwd=<- names the field and says the typing is not shown, in French too."""
        class Terminal(io.StringIO):
            def isatty(self) -> bool:
                return True

        asked: list[str] = []
        self.patch(form_fields.getpass, "getpass", lambda prompt: asked.append(prompt) or SECRET)
        for lang in ("en", "fr"):
            code, _, err = await self.send("--lang", lang, "send", self.path, "--relay", str(self.relay.endpoint),
                                           "-F", "userPwd=<-", stdin=Terminal())
            self.assertEqual(code, 0, err)
        self.assertEqual(asked, ["userPwd (not shown): ", "userPwd (non affiché) : "])

    async def test_end_of_input_at_the_password_prompt(self) -> None:
        """Ctrl-D at the terminal's prompt for -F userPwd=<-: the empty-value error, not a traceback."""
        code, out, err = await self.at_the_password_prompt(EOFError)
        self.assertEqual((code, out), (2, b""), err)
        self.assertIn("-F userPwd=<-: the first line of standard input is empty", err)

    async def test_ctrl_c_at_the_password_prompt(self) -> None:
        """Ctrl-C at the terminal's prompt for -F userPwd=<-: status 130 and one line, in French too, no traceback."""
        for lang, message in [("en", "epop: Interrupted (SIGINT): nothing was done."),
                              ("fr", "epop: Interrompu (SIGINT) : rien n'a été fait.")]:
            code, out, err = await self.at_the_password_prompt(KeyboardInterrupt, "--lang", lang)
            self.assertEqual((code, out), (130, b""), err)
            self.assertIn(message, err)

    async def test_unusable_values_are_refused_without_echoing_them(self) -> None:
        """A missing file, an empty first line, a value without name: status 2, a clear message, no secret."""
        missing = os.path.abspath(self.mktemp())
        blank = self.mktemp()
        with open(blank, "w") as f:
            f.write("\n" + SECRET + "\n")
        relay = ("--relay", str(self.relay.endpoint))
        cases = [
            (("-F", f"userPwd=<{missing}"), None, f"-F userPwd=<{missing}: cannot read {missing}: No such file or directory"),
            (("-F", f"userPwd=<{blank}"), None, f"-F userPwd=<{blank}: the first line of {blank} is empty"),
            (("-F", "userPwd=<-"), io.StringIO(""), "-F userPwd=<-: the first line of standard input is empty"),
            (("-F", "userPwd=<-", "-F", "userId=<-"), io.StringIO(SECRET + "\n"),
             "-F userPwd, userId: standard input can give only one value (NAME=<-)"),
            (("-F", "userPwd=<"), None, "-F userPwd=<: give the file to read the value from, or - for standard input"),
            (("-F", "userPwd="), None,
             "-F userPwd=: the value is empty; to read it from a file, quote it: -F 'userPwd=<FILE'"),
            (("-F", "=" + SECRET), None, "-F =...: the form field has no name (expected NAME=VALUE)"),
        ]
        for flags, stdin, message in cases:
            code, out, err = await self.send("send", self.path, *relay, *flags, stdin=stdin)
            self.assertEqual((code, out), (2, b""), (flags, err))
            self.assertIn(message, err)
            self.assertNotIn(SECRET, err)
            self.assertNotIn("Traceback", err)
        code, _, err = await self.send("--lang", "fr", "send", self.path, *relay, "-F", f"userPwd=<{missing}")
        self.assertEqual(code, 2)
        self.assertIn(f"-F userPwd=<{missing} : impossible de lire {missing} :", err)
