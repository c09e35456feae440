"""
Changing who may connect while the relay runs: L{RelayService.set_allowlist},
and C{SIGHUP} re-reading the C{--config} file under twistd.  New
connections meet the new list, transfers in flight go on, and the journal
records each reload (C{settings-reloaded}), including the ones that fail.
"""

from __future__ import annotations

import os
import signal

from twisted.internet import reactor
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from epop.relay import tap
from epop.workstation.client import RelayAddress, test_connection
from epop.testing import MemoryJournalWriter
from epop.relay.service import RelayService, make_relay_service
from epop.wire import FrameType
from tests.relaying import HELLO, raw_connect, start_relay
from tests.support import make_trustme_sandbox, poll_until
from tests.test_drain import RawUpload, free_port, start_relay_process


def _write(path: str, text: str) -> None:
    """Replace the file's content in one step, as an editor saving it would."""
    with open(path + ".new", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".new", path)


class SetAllowlistTests(TestCase):
    """The library API, on a relay running in this process."""

    def setUp(self) -> None:
        self.sandbox = make_trustme_sandbox(self, reactor)
        self.relay = start_relay(self, reactor, self.sandbox.url, self.sandbox.ca_path)

    async def test_new_connections_meet_the_new_list(self) -> None:
        """Everyone, then only 10.0.0.0/8, then everyone again; each change journaled."""
        report = await test_connection(reactor, relay=self.relay.endpoint)
        self.assertTrue(report.ok, report.describe())
        self.relay.service.set_allowlist(["10.0.0.0/8"], source="a test")
        report = await test_connection(reactor, relay=self.relay.endpoint)
        self.assertEqual(report.error.code, "not-authorized")
        self.relay.service.set_allowlist([])
        report = await test_connection(reactor, relay=self.relay.endpoint)
        self.assertTrue(report.ok, report.describe())
        reloads = self.relay.records("settings-reloaded")
        self.assertEqual(
            [(r["allow"], r["outcome"]) for r in reloads],
            [(["10.0.0.0/8"], "completed"), ([], "completed")],
        )
        self.assertEqual(
            reloads[0]["description"], "Settings reloaded from a test: clients allowed: 10.0.0.0/8"
        )
        self.assertIn("clients allowed: everyone", reloads[1]["description"])
        self.assertEqual(self.relay.service.settings.allow, ())

    def test_bad_entry_keeps_the_old_list(self) -> None:
        """A bad entry raises, names itself, and changes nothing."""
        self.relay.service.set_allowlist(["10.0.0.0/8"])
        error = self.assertRaises(ValueError, self.relay.service.set_allowlist, ["10.1.2.300"])
        self.assertIn("10.1.2.300", str(error))
        self.assertEqual(self.relay.service.allowlist.entries, ("10.0.0.0/8",))

    def test_reload_failure_is_journaled(self) -> None:
        """reload_allowlist with a loader that fails keeps the list and journals why, as a warning."""
        self.relay.service.set_allowlist(["10.0.0.0/8"])
        levels = []
        globalLogPublisher.addObserver(levels.append)
        self.addCleanup(globalLogPublisher.removeObserver, levels.append)

        def broken() -> list[str]:
            raise ValueError("relay.ini, line 3: allow: 'x' is not an IP address")

        self.assertFalse(self.relay.service.reload_allowlist(broken, source="relay.ini"))
        [failed] = self.relay.records("settings-reloaded")[1:]
        self.assertEqual(
            (failed["outcome"], failed["error"], failed["allow"]),
            ("failed", "bad-settings", ["10.0.0.0/8"]),
        )
        self.assertIn("line 3: allow: 'x' is not an IP address", failed["description"])
        self.assertIn("still: 10.0.0.0/8", failed["description"])
        [event] = [e for e in levels if e.get("epop_event") == "settings-reloaded"]
        self.assertEqual(event["log_level"].name, "warn")
        self.assertTrue(self.relay.service.reload_allowlist(lambda: ["192.168.0.0/16"], source="x"))
        self.assertEqual(self.relay.service.allowlist.entries, ("192.168.0.0/16",))


class TapReloadTests(SynchronousTestCase):
    """What twistd's SIGHUP does: re-read --config and apply its allow entries."""

    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        self.journal = self.mktemp()
        _write(self.path, "[epop]\nallow = 127.0.0.0/8\nidle-timeout = 60\n")

    def build(self, *arguments: str) -> tuple[tap.Options, MemoryJournalWriter, RelayService]:
        options = tap.Options()
        options.parseOptions(["--config", self.path, "--no-check", "--journal", self.journal, *arguments])
        writer = MemoryJournalWriter()
        relay = make_relay_service(
            MemoryReactorClock(), options.settings(), journal_writer=lambda: writer
        )
        relay.startService()
        self.addCleanup(relay.stopService)
        return options, writer, relay

    def reloads(self, writer: MemoryJournalWriter) -> list[dict]:
        return [r for r in writer.records if r["type"] == "settings-reloaded"]

    def test_reload_applies_allow(self) -> None:
        """The file's new allow entries replace the list; other changes wait for a restart."""
        options, writer, relay = self.build()
        self.assertEqual(relay.allowlist.entries, ("127.0.0.0/8",))
        warnings = []
        globalLogPublisher.addObserver(warnings.append)
        self.addCleanup(globalLogPublisher.removeObserver, warnings.append)
        _write(self.path, "[epop]\nallow =\n    10.0.0.0/8\n    fd00::/8\nidle-timeout = 30\n")
        tap.reload_allowlist(relay, options)
        self.assertEqual(relay.allowlist.entries, ("10.0.0.0/8", "fd00::/8"))
        [record] = self.reloads(writer)
        self.assertEqual((record["allow"], record["outcome"]), (["10.0.0.0/8", "fd00::/8"], "completed"))
        self.assertIn(self.path, record["description"])
        later = [e for e in warnings if "only allow is applied" in e.get("log_format", "")]
        self.assertEqual([e["names"] for e in later], ["idle-timeout"])
        self.assertEqual(relay.settings.idle_timeout, 60.0)

    def test_reload_without_allow_means_everyone(self) -> None:
        """Removing the allow key lets everyone in again."""
        options, writer, relay = self.build()
        _write(self.path, "[epop]\nidle-timeout = 60\n")
        tap.reload_allowlist(relay, options)
        self.assertFalse(relay.allowlist)
        self.assertEqual(self.reloads(writer)[0]["allow"], [])

    def test_bad_file_keeps_the_old_list(self) -> None:
        """A file that no longer reads keeps the list; the journal names the problem."""
        options, writer, relay = self.build()
        for text, problem in [
            ("[epop]\nallow = 10.1.2.300\n", "allow: '10.1.2.300' is not an IP address"),
            ("[epop]\nallow 10.0.0.0/8\n", "line 2: cannot read 'allow 10.0.0.0/8'"),
            ("[epop]\nallow = 10.0.0.0/8\nproxy-password = secret\n", "proxy-password: passwords are never read"),
        ]:
            _write(self.path, text)
            tap.reload_allowlist(relay, options)
            record = self.reloads(writer)[-1]
            self.assertEqual((record["outcome"], record["error"]), ("failed", "bad-settings"))
            self.assertEqual(record["allow"], ["127.0.0.0/8"])
            self.assertIn(problem, record["description"])
            self.assertNotIn("secret", record["description"])
        os.remove(self.path)
        tap.reload_allowlist(relay, options)
        self.assertIn("cannot read the settings file", self.reloads(writer)[-1]["description"])
        self.assertEqual(relay.allowlist.entries, ("127.0.0.0/8",))

    def test_command_line_allow_wins(self) -> None:
        """--allow on the command line overrides the file, on reload too, and the journal says so."""
        options, writer, relay = self.build("--allow", "192.168.0.0/16")
        self.assertEqual(relay.allowlist.entries, ("192.168.0.0/16",))
        _write(self.path, "[epop]\nallow = 10.0.0.0/8\n")
        tap.reload_allowlist(relay, options)
        self.assertEqual(relay.allowlist.entries, ("192.168.0.0/16",))
        [record] = self.reloads(writer)
        self.assertEqual((record["outcome"], record["error"]), ("failed", "allow-on-command-line"))


class HangupHandlerTests(TestCase):
    """twistd's service installs the SIGHUP handler while it runs, and restores the old one."""

    def setUp(self) -> None:
        if not hasattr(signal, "SIGHUP"):
            raise self.skipTest("no SIGHUP on this platform")

    async def test_installed_then_restored(self) -> None:
        before = signal.getsignal(signal.SIGHUP)
        calls = []
        service = tap._TwistdRelay(lambda: calls.append(1))
        service.startService()
        handler = signal.getsignal(signal.SIGHUP)
        self.assertNotIn(handler, (before, signal.SIG_DFL, signal.SIG_IGN, None))
        try:
            os.kill(os.getpid(), signal.SIGHUP)
            self.assertTrue(await poll_until(reactor, lambda: calls == [1]))
        finally:
            await service.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), before)

    async def test_without_config_nothing_to_reload(self) -> None:
        """
        Without --config, SIGHUP is still handled (its default action would
        end the relay without a word): a warning in the relay's language.
        """
        before = signal.getsignal(signal.SIGHUP)
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        service = tap._TwistdRelay(language="fr")
        service.startService()
        self.assertNotIn(signal.getsignal(signal.SIGHUP), (before, signal.SIG_DFL, signal.SIG_IGN, None))
        try:
            os.kill(os.getpid(), signal.SIGHUP)
            said = lambda: [e for e in events if e.get("log_format", "").startswith("SIGHUP")]
            self.assertTrue(await poll_until(reactor, said))
        finally:
            await service.stopService()
        [event] = said()
        self.assertEqual(event["log_level"].name, "warn")
        self.assertEqual(
            event["log_format"],
            "SIGHUP : rien à recharger : le relais a été démarré sans --config ; il continue tel quel",
        )
        self.assertEqual(signal.getsignal(signal.SIGHUP), before)


class HangupWithoutConfigProcessTests(TestCase):
    """A real twistd relay started without --config, sent SIGHUP (systemctl reload out of habit)."""

    timeout = 120

    async def test_goes_on(self) -> None:
        if not hasattr(signal, "SIGHUP"):
            raise self.skipTest("no SIGHUP on this platform")
        port = free_port()
        relay = await start_relay_process(self, port, environ={"LANG": "C.UTF-8", "LC_ALL": "", "LC_MESSAGES": ""})
        relay.signal(signal.SIGHUP)
        line = "SIGHUP: nothing to reload: the relay was started without --config; it goes on as it is"
        self.assertTrue(
            await poll_until(reactor, lambda: relay.ended.called or line in relay.text(), 200, 0.05),
            relay.text(),
        )
        self.assertFalse(relay.ended.called, relay.text())
        # Still listening: a workstation's HELLO is welcomed, as epop test's is.
        client = await raw_connect(self, reactor, port)
        client.transport.write(HELLO)
        welcome = await client.next_frame()
        self.assertEqual(welcome.kind, FrameType.WELCOME, welcome.message())
        client.transport.loseConnection()
        self.assertIn(await relay.stop(), [(0, None), (None, signal.SIGTERM)])


class ConfigOptionTests(SynchronousTestCase):
    def test_reload_reads_the_absolute_path(self) -> None:
        """--config parses into settings; the reload target is the file's absolute path."""
        path = self.mktemp()
        _write(path, "[epop]\nallow = 10.0.0.0/8\n")
        options = tap.Options()
        options.parseOptions(["--config", path, "--journal", self.mktemp()])
        assert options.settings_file is not None
        self.assertEqual(options.settings_file.path, os.path.abspath(path))
        self.assertEqual(options.settings().allow, ("10.0.0.0/8",))

    def test_bad_config_is_a_usage_error(self) -> None:
        path = self.mktemp()
        _write(path, "[epop]\nallow = nowhere\n")
        options = tap.Options()
        error = self.assertRaises(usage.UsageError, options.parseOptions, ["--config", path])
        self.assertIn("allow: 'nowhere' is not an IP address", str(error))


class HangupProcessTests(TestCase):
    """A real twistd relay, sent SIGHUP with an upload in flight."""

    timeout = 120

    async def test_sighup_reloads_allowlist(self) -> None:
        sandbox = make_trustme_sandbox(self, reactor)
        port = free_port()
        config = os.path.abspath(self.mktemp())
        settings = (
            "[epop]\n"
            f"epmsi = {sandbox.url}\n"
            f"ca-file = {sandbox.ca_path}\n"
            "allow =\n    127.0.0.0/8\n"
        )
        _write(config, settings)
        relay = await start_relay_process(self, port, "--config", config)
        # An upload from 127.0.0.1, allowed, is halfway when the list changes.
        size = 4 * 1024 * 1024
        upload = await RawUpload.start(self, port, size, seed=3)
        upload.send(0, size // 2)
        self.assertTrue(
            await poll_until(reactor, lambda: "object-instantiated" in relay.types(), 200, 0.05),
            relay.text(),
        )
        _write(config, settings.replace("127.0.0.0/8", "10.0.0.0/8"))
        relay.signal(signal.SIGHUP)
        self.assertTrue(
            await poll_until(reactor, lambda: "settings-reloaded" in relay.types(), 200, 0.05),
            relay.text(),
        )
        self.assertFalse(relay.ended.called, relay.text())
        # A new connection from 127.0.0.1 is refused...
        report = await test_connection(reactor, relay=RelayAddress("127.0.0.1", port), timeout=10)
        self.assertEqual(report.error.code, "not-authorized", report.describe())
        # ...while the upload in flight goes on to the end, intact.
        upload.finish(size // 2)
        self.assertTrue(await poll_until(reactor, upload.ended, 400, 0.05), relay.text())
        self.assertEqual(upload.errors(), [], relay.text())
        self.assertEqual(upload.client.frames[-1].kind, FrameType.RESPONSE_END)
        self.assertEqual(upload.answer()["files"][0]["sha256"], upload.sha256)
        self.assertEqual(
            [sandbox.sha256_of(f) for f in sandbox.complete_files()], [upload.sha256]
        )
        # A broken file on the next SIGHUP keeps the list, and says why.
        _write(config, settings.replace("127.0.0.0/8", "10.0.0.300"))
        relay.signal(signal.SIGHUP)
        self.assertTrue(
            await poll_until(reactor, lambda: relay.types().count("settings-reloaded") == 2, 200, 0.05),
            relay.text(),
        )
        report = await test_connection(reactor, relay=RelayAddress("127.0.0.1", port), timeout=10)
        self.assertEqual(report.error.code, "not-authorized", report.describe())
        self.assertIn(await relay.stop(), [(0, None), (None, signal.SIGTERM)])
        records = relay.records()
        reloads = [r for r in records if r["type"] == "settings-reloaded"]
        self.assertEqual(
            [(r["outcome"], r["allow"]) for r in reloads],
            [("completed", ["10.0.0.0/8"]), ("failed", ["10.0.0.0/8"])],
        )
        self.assertEqual(reloads[1]["error"], "bad-settings")
        self.assertIn("allow: '10.0.0.300' is not an IP address", reloads[1]["description"])
        refused = [
            r for r in records if r["type"] == "connection-closed" and r["reason"] == "not-authorized"
        ]
        self.assertEqual(len(refused), 2)
        [released] = [r for r in records if r["type"] == "object-released"]
        self.assertEqual((released["outcome"], released["integrity"]), ("completed", "ok"))
        # Readable text in the twistd log as well.
        self.assertIn("Settings reloaded from " + config + ": clients allowed: 10.0.0.0/8", relay.text())
