"""
The console in a real browser (Debian's headless Chromium, selenium),
against a live relay, its console and the sandbox: what an IT person does
with it, as with the original's window.  Screenshots of each state are
saved in the test's temporary folder (and in C{EPOP_SCREENSHOTS}, when set,
which is how C{docs/images/console-*.png} are made).
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any

from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from epop.console.relay_backend import ConsoleFiles, RelayConsoleBackend
from epop.console.service import ConsoleSettings, make_console_service
from epop.relay.settings import SettingKeys, read_settings_file
from epop.relay.tap import Options
from tests.browser import Browser
from tests.relaying import RunningRelay, start_relay
from tests.support import free_port, make_trustme_sandbox, poll_until, write_random_file

#: Seconds the page has to show a change (it is pushed, not polled).
SHOWN_WITHIN = 10.0


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _text(driver: Any, selector: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.CSS_SELECTOR, selector).text)


def _wait(driver: Any, condition: Any, what: str) -> Any:
    """
    Wait (bounded) until C{condition(driver)} is true, in the browser's
    thread.  An element the live page replaced while the condition read it
    is asked again at the next poll.
    """
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(
        driver, SHOWN_WITHIN, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
    )
    return wait.until(condition, what)


def _title_shows(text: str) -> Any:
    return lambda driver: text in driver.title and text in _text(driver, "#title")


class ConsoleInBrowserTests(TestCase):
    def setUp(self) -> None:
        reactor = self.reactor = _reactor()
        self.sandbox = make_trustme_sandbox(self, reactor)
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)
        self.config = os.path.join(self.folder, "relay.ini")
        self.port = free_port()
        self.relay: RunningRelay = start_relay(
            self,
            reactor,
            self.sandbox.url,
            self.sandbox.ca_path,
            file_journal=True,
            journal=os.path.join(self.folder, "journal.jsonl"),
            listen=(f"tcp:{self.port}:interface=127.0.0.1",),
        )
        _console, logged = self.start_console()
        urls = [e["url"] for e in logged if "url" in e and "token=" in str(e.get("url"))]
        self.assertTrue(urls, "the console logged no URL with a token")
        self.url = urls[-1]

    def start_console(self, password_file: str | None = None) -> tuple[Any, list[dict[str, Any]]]:
        """A console for the relay on a free loopback port, and the log events it wrote."""
        backend = RelayConsoleBackend(
            self.reactor, self.relay.service, ConsoleFiles(self.config, config_in_use=True), globalLogPublisher
        )
        logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        settings = ConsoleSettings("tcp:0:interface=127.0.0.1", password_file, None)
        console = make_console_service(self.reactor, backend, settings)
        console.privilegedStartService()
        console.startService()
        self.addCleanup(console.stopService)
        return console, logged

    def shot(self, driver: Any, name: str) -> None:
        path = os.path.join(self.folder, f"console-{name}.png")
        driver.save_screenshot(path)
        target = os.environ.get("EPOP_SCREENSHOTS")
        if target:
            shutil.copy(path, os.path.join(target, f"console-{name}.png"))

    async def epop(self, *arguments: str) -> tuple[bytes, bytes, int]:
        """The real C{epop} command, as a workstation runs it."""
        # No workstation settings of this machine's: only what the test says.
        env = {**os.environ, "EPOP_CONFIG": os.path.join(self.folder, "client.ini")}
        return await getProcessOutputAndValue(
            sys.executable, ["-c", "from epop.cli import main; main()", *arguments], env=env
        )

    async def assert_refused(self, port: int) -> None:
        with self.assertRaises(ConnectionRefusedError):
            await connectProtocol(TCP4ClientEndpoint(self.reactor, "127.0.0.1", port), Protocol())

    async def test_manage_the_relay_from_the_console(self) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        reactor = self.reactor
        browser = await Browser.start(self, reactor, [], ["--window-size=1280,1250"])
        driver = browser.driver

        def open_console() -> None:
            driver.get(self.url)
            _wait(driver, _title_shows(f"127.0.0.1:{self.port}"), "the title with the relay's address")

        await browser.call(open_console)
        await browser.call(self.shot, driver, "listening")

        # A file sent with epop send shows in the connections, without a reload.
        archive = os.path.join(self.folder, "rss.zip")
        write_random_file(archive, 200 * 1024)
        out, err, code = await self.epop(
            "send", "--relay", f"127.0.0.1:{self.port}", "--to", "/syriusUpload.do", "--field", "theFile",
            "-F", "userId=demo", "-F", "year=2026", "-F", "period=M11", "-F", "finess=123456789", archive,
        )
        self.assertEqual(code, 0, err.decode(errors="replace"))
        connection = f"{self.relay.service.relay_id}:1"

        def select_connection() -> list[tuple[str, str]]:
            _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f'#connections tr[data-id="{connection}"]'),
                  "the upload's connection in the list")
            # Another connection, so that the filter has something to hide.
            driver.find_element(By.CSS_SELECTOR, f'#connections tr[data-id="{connection}"]').click()
            _wait(driver, lambda d: all(
                row.get_attribute("data-connection") == connection
                for row in d.find_elements(By.CSS_SELECTOR, "#journal tr[data-type]")
            ) and d.find_elements(By.CSS_SELECTOR, "#journal tr[data-type]"), "the journal filtered to the connection")
            return [
                (row.get_attribute("data-type"), row.get_attribute("data-connection"))
                for row in driver.find_elements(By.CSS_SELECTOR, "#journal tr[data-type]")
            ]

        report_out, report_err, report_code = await self.epop("test", "--relay", f"127.0.0.1:{self.port}")
        self.assertEqual(report_code, 0, report_err.decode(errors="replace"))
        rows = await browser.call(select_connection)
        self.assertLessEqual({"connection-opened", "connection-closed"}, {t for t, _ in rows})
        await browser.call(self.shot, driver, "connection-selected")

        # Listening: the settings are locked, and the page says why.
        def locked() -> tuple[bool, str]:
            return driver.find_element(By.ID, "port").is_enabled(), _text(driver, "#settings-locked")

        enabled, why = await browser.call(locked)
        self.assertFalse(enabled)
        self.assertIn("only be changed while listening is stopped", why)

        # Stop, change the port, start again.
        new_port = free_port()

        def stop_change_start() -> None:
            driver.find_element(By.ID, "listen-toggle").click()
            _wait(driver, lambda d: d.find_element(By.ID, "port").is_enabled(), "the settings unlocked")
            _wait(driver, _title_shows("stopped"), "the title saying stopped")
            self.shot(driver, "stopped")
            # Allowed clients: a bad address is refused next to the field; a good one is listed.
            driver.find_element(By.ID, "allow-listed").click()
            entry = driver.find_element(By.ID, "allow-entry")
            entry.send_keys("10.1.2.300")
            driver.find_element(By.ID, "allow-add").click()
            _wait(driver, lambda d: "10.1.2.300" in _text(d, '[data-field-error="allow"]'), "the bad address refused")
            entry.send_keys(Keys.CONTROL, "a")
            entry.send_keys("127.0.0.1")
            driver.find_element(By.ID, "allow-add").click()
            _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, '#allow-list li[data-address="127.0.0.1"]'),
                  "127.0.0.1 listed")
            # Test e-PMSI: the address reached and the time taken.
            driver.find_element(By.ID, "test-epmsi").click()
            _wait(driver, lambda d: "reached at 127.0.0.1:" in _text(d, "#test-result"), "the e-PMSI test's result")
            self.shot(driver, "settings")
            field = driver.find_element(By.ID, "port")
            field.send_keys(Keys.CONTROL, "a")
            field.send_keys(str(new_port))
            driver.find_element(By.ID, "save-settings").click()
            _wait(driver, lambda d: os.path.exists(self.config), "the settings saved")
            driver.find_element(By.ID, "listen-toggle").click()
            _wait(driver, _title_shows(f"127.0.0.1:{new_port}"), "the title with the new port")
            driver.find_element(By.ID, "clear-selection").click()
            _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, '#journal tr[data-type="listening-opened"]'),
                  "the whole journal again")
            self.shot(driver, "new-port")

        await browser.call(stop_change_start)
        out, err, code = await self.epop("test", "--relay", f"127.0.0.1:{new_port}")
        self.assertEqual(code, 0, err.decode(errors="replace"))
        await self.assert_refused(self.port)
        saved = read_settings_file(self.config, SettingKeys.of(Options())).values
        self.assertEqual(saved["listen"], (f"tcp:{new_port}:interface=127.0.0.1",))
        self.assertEqual(saved["allow"], ("127.0.0.1",))
        self.assertEqual(self.relay.service.settings.allow, ("127.0.0.1",))
        self.assertTrue(await poll_until(reactor, lambda: self.relay.service.listening))

        # In French, as the original: the title and why the settings are locked.
        def in_french() -> str:
            driver.find_element(By.ID, "lang-fr").click()
            _wait(driver, _title_shows(f"Relais e-POP — 127.0.0.1:{new_port}"), "the title in French")
            _wait(driver, lambda d: "l'écoute est coupée" in _text(d, "#settings-locked"), "the lock's reason in French")
            # The relay's words in the lists too: a closed connection's outcome, the journal's descriptions.
            _wait(driver, lambda d: "fermée par le client" in _text(d, "#connections"), "the outcome in French")
            _wait(driver, lambda d: "Id de connexion" in _text(d, "#journal"), "the journal's descriptions in French")
            self.shot(driver, "french")
            return _text(driver, "#listen-toggle")

        self.assertEqual(await browser.call(in_french), "Arrêter l'écoute")

    async def test_password_sign_in(self) -> None:
        """
        With --console-password-file, the console's address without a token
        asks for the password (the form a browser really posts, Origin and
        all); a wrong one is refused, the right one opens the console.
        """
        from selenium.webdriver.common.by import By

        password_file = os.path.join(self.folder, "console-password")
        with open(password_file, "w", encoding="utf-8") as f:
            f.write("a long passphrase\n")
        console, _logged = self.start_console(password_file)
        base = f"http://127.0.0.1:{console.port.getHost().port}/"
        browser = await Browser.start(self, self.reactor, [], ["--window-size=1280,1250"])
        driver = browser.driver

        def sign_in(password: str) -> None:
            from selenium.webdriver.support import expected_conditions

            driver.get(base)
            field = driver.find_element(By.CSS_SELECTOR, 'input[type="password"]')
            field.send_keys(password)
            field.submit()
            _wait(driver, expected_conditions.staleness_of(field), "the answer to the sign-in")

        def refused() -> str:
            sign_in("wrong")
            return _text(driver, ".error")

        self.assertEqual(await browser.call(refused), "Wrong password.")

        def signed_in() -> None:
            sign_in("a long passphrase")
            _wait(driver, _title_shows(f"127.0.0.1:{self.port}"), "the console after signing in")

        await browser.call(signed_in)

