"""
A real browser against the sandbox: headless Chromium (L{tests.browser})
opens the sandbox's upload page over HTTPS, fills its form, sends a file,
and the sandbox must hold that file intact; then the same through a real
relay, the browser set up with the relay's PAC file, and the relay's
refusals as a browser meets them.  Skipped without Chromium, its driver or
selenium, unless C{EPOP_REQUIRE_BROWSER=1}.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from typing import Any

import trustme
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from tests import browser as harness
from tests.browser import REQUIRE_VARIABLE, Browser, TestNames, net_error, require_browser, spki_sha256
from tests.relaying import RunningRelay, start_relay
from tests.support import TestSandbox, make_trustme_sandbox, poll_until, write_random_file

#: Reading the receipt page after submitting: this many tries, this far apart.
RECEIPT_ATTEMPTS = 100
RECEIPT_INTERVAL = 0.1

#: The sandbox's name for the relay (allowed), and a name it is not allowed
#: to tunnel to: names, not loopback addresses, so that Chromium asks the
#: PAC about them (see L{tests.browser}).
EPMSI_NAME = "epmsi.epop.test"
ELSEWHERE_NAME = "elsewhere.epop.test"

FIELDS = {
    "userId": "browser-user",
    "userPwd": "browser-secret",
    "year": "2026",
    "period": "M11",
    "finess": "750000000",
}


def _reactor() -> Any:
    """The running reactor, imported late so trial's --reactor choice holds."""
    from twisted.internet import reactor

    return reactor


def _fill_and_submit(driver: Any, page: str, file_path: str) -> str:
    """Open C{page}, fill the form as a person would, send it; returns the form's action."""
    from selenium.webdriver.common.by import By

    driver.get(page)
    form = driver.find_element(By.TAG_NAME, "form")
    action = str(form.get_attribute("action"))
    for name, value in FIELDS.items():
        form.find_element(By.NAME, name).send_keys(value)
    form.find_element(By.NAME, "theFile").send_keys(file_path)
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    return action


def _read_receipt(driver: Any) -> dict[str, Any]:
    """The JSON receipt the browser shows after submitting, polled a bounded number of times."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    shown = ""
    for _ in range(RECEIPT_ATTEMPTS):
        try:
            shown = driver.find_element(By.TAG_NAME, "pre").text
            receipt = json.loads(shown)
        except (WebDriverException, ValueError):
            time.sleep(RECEIPT_INTERVAL)
            continue
        if isinstance(receipt, dict):
            return receipt
    raise AssertionError(f"no receipt shown at {driver.current_url}: {shown[:200]!r}")


class BrowserUploadTests(TestCase):
    """Chromium uploads a file with the sandbox's own form."""

    async def test_form_upload(self) -> None:
        """The file sent with the form arrives intact, with the form's fields but not their values."""
        reactor = _reactor()
        sandbox = make_trustme_sandbox(self, reactor)
        browser = await Browser.start(self, reactor, [sandbox.certificate_pem])
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        path = os.path.join(folder, "rss.zip")
        size = 300 * 1024
        sha256 = write_random_file(path, size)

        action = await browser.call(
            _fill_and_submit, browser.driver, sandbox.url + "/", path
        )
        receipt = await browser.call(_read_receipt, browser.driver)

        self.assertEqual(action, sandbox.url + "/syriusUpload.do")
        self.assertEqual(receipt["status"], "received", receipt)
        self.assertEqual(receipt["path"], "/syriusUpload.do")
        self.assertEqual(
            [(f["field"], f["filename"], f["size"], f["sha256"]) for f in receipt["files"]],
            [("theFile", "rss.zip", size, sha256)],
        )
        self.assertEqual(sorted(receipt["fields"]), sorted(FIELDS))
        self.assertNotIn("browser-secret", json.dumps(receipt))
        self.assertTrue(await poll_until(reactor, lambda: bool(sandbox.complete_files())))
        [stored] = sandbox.complete_files()
        self.assertEqual(stored.basename(), "rss.zip")
        self.assertEqual(stored.parent().basename(), receipt["upload"])
        self.assertEqual(sandbox.sha256_of(stored), sha256)

    async def test_other_certificate_refused(self) -> None:
        """A browser trusting another key gets no page from the sandbox: certificate checks stay on."""
        from selenium.webdriver.common.by import By

        reactor = _reactor()
        sandbox = make_trustme_sandbox(self, reactor)
        other = trustme.CA().issue_cert("127.0.0.1").cert_chain_pems[0].bytes()
        browser = await Browser.start(self, reactor, [other])

        def open_page() -> tuple[str, int]:
            browser.driver.get(sandbox.url + "/")
            title = browser.driver.title
            return title, len(browser.driver.find_elements(By.NAME, "theFile"))

        title, file_inputs = await browser.call(open_page)
        self.assertEqual(file_inputs, 0, title)
        self.assertNotIn("e-PMSI sandbox", title)


def _sandbox_title(driver: Any, url: str) -> str:
    """Open C{url}; the page's title, or the network error shown instead."""
    error = net_error(driver, url)
    return error or str(driver.title)


class BrowserThroughRelayTests(TestCase):
    """
    Chromium set up with the relay's PAC (C{--proxy-pac-url}), as
    docs/applications.md tells administrators: e-PMSI (here the sandbox,
    the relay's C{--epmsi}) goes through the relay, every other site
    directly.
    """

    def start(self) -> tuple[Any, TestSandbox, RunningRelay]:
        reactor = _reactor()
        sandbox = make_trustme_sandbox(self, reactor)
        TestNames(reactor, {EPMSI_NAME: "127.0.0.1"}).install(self)
        relay = start_relay(
            self, reactor, f"https://{EPMSI_NAME}:{sandbox.port.getHost().port}", sandbox.ca_path
        )
        return reactor, sandbox, relay

    def pac_url(self, relay: RunningRelay) -> str:
        return f"--proxy-pac-url=http://127.0.0.1:{relay.port}/proxy.pac"

    def tunnels(self, relay: RunningRelay) -> list[str]:
        return [r["destination"] for r in relay.records("object-instantiated") if r["kind"] == "tunnel"]

    async def test_form_upload_through_relay(self) -> None:
        """
        The page and the upload reach the sandbox only through the relay's
        tunnel (Chromium cannot resolve the sandbox's name itself); the
        file arrives intact, and the relay journaled the PAC and the tunnel.
        """
        reactor, sandbox, relay = self.start()
        browser = await Browser.start(self, reactor, [sandbox.certificate_pem], [self.pac_url(relay)])
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        path = os.path.join(folder, "rss.zip")
        size = 300 * 1024
        sha256 = write_random_file(path, size)
        origin = f"https://{EPMSI_NAME}:{sandbox.port.getHost().port}"

        action = await browser.call(_fill_and_submit, browser.driver, origin + "/", path)
        receipt = await browser.call(_read_receipt, browser.driver)

        self.assertEqual(action, origin + "/syriusUpload.do")
        self.assertEqual(
            [(f["field"], f["filename"], f["size"], f["sha256"]) for f in receipt["files"]],
            [("theFile", "rss.zip", size, sha256)],
        )
        self.assertTrue(await poll_until(reactor, lambda: bool(sandbox.complete_files())))
        [stored] = sandbox.complete_files()
        self.assertEqual(sandbox.sha256_of(stored), sha256)
        # The relay served the PAC, and carried the upload in its tunnels.
        served = [r for r in relay.records("connection-closed") if r["reason"] == "served-pac"]
        self.assertTrue(served, relay.types())
        self.assertTrue(self.tunnels(relay))
        self.assertEqual(set(self.tunnels(relay)), {origin[len("https://"):]})
        await browser.quit()
        self.assertTrue(
            await poll_until(reactor, lambda: len(relay.records("object-released")) == len(self.tunnels(relay)))
        )
        released = relay.records("object-released")
        self.assertEqual({r["destination_address"] for r in released}, {"127.0.0.1"})
        self.assertGreater(sum(r["bytes_in"] for r in released), size)

    async def test_other_sites_go_direct(self) -> None:
        """
        A site that is not a destination goes DIRECT per the PAC: the relay
        never sees it (while the same browser's e-PMSI still goes through
        the relay, so the PAC was in force).
        """
        reactor, sandbox, relay = self.start()
        port = sandbox.port.getHost().port
        browser = await Browser.start(
            self, reactor, [sandbox.certificate_pem],
            [self.pac_url(relay), f"--host-resolver-rules=MAP {ELSEWHERE_NAME} 127.0.0.1"],
        )
        title = await browser.call(_sandbox_title, browser.driver, f"https://{ELSEWHERE_NAME}:{port}/")
        self.assertIn("e-PMSI sandbox", title)
        self.assertEqual(self.tunnels(relay), [])
        # (A connection Chromium opens ahead and never uses is closed-by-client.)
        reasons = {r["reason"] for r in relay.records("connection-closed")}
        self.assertIn("served-pac", reasons)
        self.assertLessEqual(reasons, {"served-pac", "closed-by-client"})

        title = await browser.call(_sandbox_title, browser.driver, f"https://{EPMSI_NAME}:{port}/")
        self.assertIn("e-PMSI sandbox", title)
        self.assertEqual(set(self.tunnels(relay)), {f"{EPMSI_NAME}:{port}"})

    async def test_relay_as_fixed_proxy_refuses_other_sites(self) -> None:
        """
        A browser given the relay as its fixed proxy (C{--proxy-server})
        gets Chromium's tunnel error for a site that is not e-PMSI; the
        relay journaled why, and nothing reached the site.
        """
        reactor, sandbox, relay = self.start()
        port = sandbox.port.getHost().port
        browser = await Browser.start(
            self, reactor, [sandbox.certificate_pem],
            [f"--proxy-server=http://127.0.0.1:{relay.port}"],
        )
        shown = await browser.call(_sandbox_title, browser.driver, f"https://{ELSEWHERE_NAME}:{port}/")
        self.assertEqual(shown, "ERR_TUNNEL_CONNECTION_FAILED")
        self.assertTrue(await poll_until(reactor, lambda: relay.records("connection-closed")))
        # Chromium's own background requests, plain http, get not-a-tunnel;
        # a spare connection it opened ahead and never used is closed-by-client.
        reasons = {r["reason"] for r in relay.records("connection-closed")}
        self.assertIn("destination-not-allowed", reasons)
        self.assertLessEqual(reasons, {"destination-not-allowed", "not-a-tunnel", "closed-by-client"})
        self.assertEqual(self.tunnels(relay), [])
        # The allowed destination, through the same fixed proxy, loads.
        title = await browser.call(_sandbox_title, browser.driver, f"https://{EPMSI_NAME}:{port}/")
        self.assertIn("e-PMSI sandbox", title)


class BrowserHarnessTests(SynchronousTestCase):
    """What L{tests.browser} does without a browser, and the key it pins."""

    def test_missing_browser_skips(self) -> None:
        """Without EPOP_REQUIRE_BROWSER=1, a missing Chromium skips the test and says what to install."""
        self.patch(harness, "CHROMIUM", "/nonexistent/chromium")
        self.patch(
            os, "environ", {k: v for k, v in os.environ.items() if k != REQUIRE_VARIABLE}
        )
        with self.assertRaises(SkipTest) as caught:
            require_browser(self)
        self.assertIn("apt-get install chromium", str(caught.exception))

    def test_missing_browser_fails_when_required(self) -> None:
        """With EPOP_REQUIRE_BROWSER=1, a missing driver fails the test."""
        self.patch(harness, "CHROMEDRIVER", "/nonexistent/chromedriver")
        self.patch(os, "environ", {**os.environ, REQUIRE_VARIABLE: "1"})
        with self.assertRaises(self.failureException) as caught:
            require_browser(self)
        self.assertIn(f"({REQUIRE_VARIABLE}=1)", str(caught.exception))
        self.assertIn("apt-get install chromium-driver", str(caught.exception))

    def test_spki_hash(self) -> None:
        """The pinned hash is the one Chromium's documentation computes with openssl."""
        openssl = shutil.which("openssl")
        if openssl is None:
            raise SkipTest("openssl not installed")
        pem = trustme.CA().issue_cert("localhost").cert_chain_pems[0].bytes()
        recipe = (
            f"{openssl} x509 -noout -pubkey | {openssl} pkey -pubin -outform der"
            f" | {openssl} dgst -sha256 -binary | base64"
        )
        expected = subprocess.run(
            ["sh", "-c", recipe], input=pem, capture_output=True, check=True, timeout=30
        ).stdout.decode("ascii").strip()
        self.assertEqual(spki_sha256(pem), expected)
