"""
A headless Chromium for tests: Debian's C{chromium} and C{chromium-driver}
driven by selenium, in a worker thread so that the reactor running the
sandbox (and, later, the relay) keeps serving while selenium blocks.

  - Never downloads anything: the driver is C{/usr/bin/chromedriver} and
    the browser C{/usr/bin/chromium}, given explicitly, so selenium's
    driver manager does not run.
  - Trusts only the certificates it is given, by the SHA-256 of their
    public keys (C{--ignore-certificate-errors-spki-list}); every other
    certificate check stays on.
  - Missing browser, driver or selenium: the test is skipped, or fails
    with C{EPOP_REQUIRE_BROWSER=1} (CI sets it).
  - Every call into selenium is bounded in time; a call that overruns fails
    the test, and the cleanup kills the driver and its browser.
  - Through the relay: Chromium never sends a loopback name or address
    (C{localhost}, C{127.0.0.1}) to a PAC file, whatever
    C{--proxy-bypass-list=<-loopback>} says (that flag only reaches fixed
    proxies).  Tests therefore give the sandbox a name of the reserved
    C{.test} domain: L{TestNames} lets the relay (and only it, through the
    reactor's resolver) find it on loopback, and the browser, which never
    resolves a name it sends to a proxy, cannot reach it any other way.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
import re
import shutil
import signal
import subprocess
from typing import Any, Callable, Mapping, Sequence, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHostnameResolver, IHostResolution, IResolutionReceiver
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SkipTest, SynchronousTestCase
from zope.interface import implementer

__all__ = [
    "CHROMEDRIVER",
    "CHROMIUM",
    "REQUIRE_VARIABLE",
    "Browser",
    "TestNames",
    "net_error",
    "require_browser",
    "spki_sha256",
]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
REQUIRE_VARIABLE = "EPOP_REQUIRE_BROWSER"

#: Seconds a page (or a form's submission) may take to load.
PAGE_LOAD_TIMEOUT = 30.0
#: Seconds any other call into selenium may take, browser start included.
CALL_TIMEOUT = 60.0
#: Seconds quitting may take before the driver and browser are killed.
QUIT_TIMEOUT = 15.0

_T = TypeVar("_T")


def spki_sha256(certificate_pem: bytes) -> str:
    """
    Base64 SHA-256 of a certificate's SubjectPublicKeyInfo: what Chromium's
    C{--ignore-certificate-errors-spki-list} expects.
    """
    certificate = x509.load_pem_x509_certificate(certificate_pem)
    spki = certificate.public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def _unavailable(testcase: SynchronousTestCase, reason: str) -> Exception:
    if os.environ.get(REQUIRE_VARIABLE) == "1":
        return testcase.failureException(
            f"a headless browser is required ({REQUIRE_VARIABLE}=1) but {reason}"
        )
    return SkipTest(f"no headless browser ({reason}): browser tests are skipped")


def require_browser(testcase: SynchronousTestCase) -> None:
    """Skip the test (fail with C{EPOP_REQUIRE_BROWSER=1}) unless all parts are here."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            raise _unavailable(testcase, f"{path} is missing: apt-get install {package}")
    if importlib.util.find_spec("selenium") is None:
        raise _unavailable(testcase, "selenium is not installed: pip install -e '.[test]'")


class Browser:
    """
    One headless Chromium session, its selenium calls run one at a time in
    a private thread.  Start it with L{start}; it quits at the test's end.

    @ivar driver: the selenium WebDriver; use it only inside L{call}.
    """

    def __init__(self, reactor: Any, pool: ThreadPool, driver: Any, driver_pid: int) -> None:
        self._reactor = reactor
        self._pool = pool
        self.driver = driver
        self._driver_pid = driver_pid
        self._quit = False

    @classmethod
    async def start(
        cls,
        testcase: SynchronousTestCase,
        reactor: Any,
        trusted_certificates: Sequence[bytes],
        extra_arguments: Sequence[str] = (),
    ) -> "Browser":
        """
        Start Chromium trusting the PEM C{trusted_certificates} (server
        certificates, by public key) with C{extra_arguments} added (e.g.
        C{--proxy-pac-url=...}); skip the test if there is no browser.
        """
        require_browser(testcase)
        pool = ThreadPool(minthreads=1, maxthreads=1, name="epop-test-browser")
        pool.start()
        testcase.addCleanup(pool.stop)
        profile = os.path.abspath(testcase.mktemp())
        os.makedirs(profile)
        testcase.addCleanup(shutil.rmtree, profile, ignore_errors=True)
        arguments = [
            "--headless=new",
            "--no-sandbox",  # CI runs as root
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            f"--user-data-dir={profile}",
            "--ignore-certificate-errors-spki-list="
            + ",".join(spki_sha256(pem) for pem in trusted_certificates),
            *extra_arguments,
        ]
        started: list[Any] = []

        def launch() -> Any:
            from selenium import webdriver
            from selenium.webdriver.chrome.service import Service

            options = webdriver.ChromeOptions()
            options.binary_location = CHROMIUM
            for argument in arguments:
                options.add_argument(argument)
            # Its own process group, so that a hung session can be killed whole.
            service = Service(
                executable_path=CHROMEDRIVER, popen_kw={"start_new_session": True}
            )
            started.append(service)
            driver = webdriver.Chrome(options=options, service=service)
            driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT)
            return driver

        def kill_if_started() -> None:
            # A launch that overran leaves a driver (and maybe Chromium) behind.
            for service in started:
                _kill_group(service.process)

        try:
            driver = await _bounded(reactor, pool, launch, CALL_TIMEOUT)
        except BaseException:
            kill_if_started()
            raise
        browser = cls(reactor, pool, driver, started[0].process.pid)
        testcase.addCleanup(browser.quit)
        return browser

    def call(self, function: Callable[..., _T], *args: Any, timeout: float = CALL_TIMEOUT) -> Deferred[_T]:
        """Run C{function(*args)} (selenium calls) in the browser's thread, within C{timeout} seconds."""
        return Deferred.fromCoroutine(
            _bounded(self._reactor, self._pool, lambda: function(*args), timeout)
        )

    async def quit(self) -> None:
        """Close Chromium and its driver (once); kill them if they do not go in time."""
        if self._quit:
            return
        self._quit = True
        try:
            await _bounded(self._reactor, self._pool, self.driver.quit, QUIT_TIMEOUT)
        except Exception:
            _kill_group_of(self._driver_pid)
            raise


def net_error(driver: Any, url: str) -> str:
    """
    Open C{url}; the network error Chromium shows instead of the page
    (C{ERR_TUNNEL_CONNECTION_FAILED}...), or C{""} if the page loaded.
    """
    from selenium.common.exceptions import WebDriverException

    try:
        driver.get(url)
    except WebDriverException as e:
        found = re.search(r"ERR_[A-Z_]+", str(e.msg))
        return found.group(0) if found else str(e.msg)
    found = re.search(r"ERR_[A-Z_]+", driver.page_source) if not driver.title.strip() else None
    return found.group(0) if found else ""


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        pass


@implementer(IHostnameResolver)
class TestNames:
    """
    The reactor's name resolver, plus a few test names (as C{/etc/hosts}
    would add them), for as long as the test runs: the relay resolves them,
    with its real code, to the addresses given.
    """

    __test__ = False  # not a test case, whatever pytest thinks of the name

    def __init__(self, reactor: Any, names: Mapping[str, str]) -> None:
        self._names = {name.lower(): address for name, address in names.items()}
        self._reactor = reactor
        self._fallback: Any = None

    def install(self, testcase: SynchronousTestCase) -> None:
        self._fallback = self._reactor.installNameResolver(self)
        testcase.addCleanup(self._reactor.installNameResolver, self._fallback)

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Any = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        address = self._names.get(hostName.lower())
        if address is None:
            return self._fallback.resolveHostName(
                resolutionReceiver, hostName, portNumber, addressTypes, transportSemantics
            )
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        resolutionReceiver.addressResolved(IPv4Address("TCP", address, portNumber))
        resolutionReceiver.resolutionComplete()
        return resolution


async def _bounded(reactor: Any, pool: ThreadPool, function: Callable[[], _T], timeout: float) -> _T:
    """C{function()} in C{pool}, failing with TimeoutError after C{timeout} seconds."""
    running = deferToThreadPool(reactor, pool, function)
    running.addTimeout(timeout, reactor)
    return await running


def _kill_group(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None:
        _kill_group_of(process.pid)


def _kill_group_of(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
