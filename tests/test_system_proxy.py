"""
Tests for L{epop.epmsi.system_proxy}: the manual's "Importer les paramètres de
proxy". Every test injects its environment and never reads the system's
settings or the network.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from twisted.trial.unittest import SynchronousTestCase

from epop.messages import Text
from epop.epmsi import system_proxy
from epop.epmsi.system_proxy import (
    DEFAULT_EPMSI_URL,
    PAC_INSTALL_HINT,
    ProxyDiscovery,
    _from_pac_answer,
    _SystemSettings,
    discover_proxy,
)

try:
    import pypac  # noqa: F401
except ImportError:
    NO_PYPAC: str | None = "pypac is not installed (pip install 'epop[pac]')"
else:
    NO_PYPAC = None

PAC_SCRIPT = """
function FindProxyForURL(url, host) {
    if (dnsDomainIs(host, ".atih.sante.fr")) {
        return "PROXY proxy.chu.local:3128; DIRECT";
    }
    return "DIRECT";
}
"""


def discover(environ: Mapping[str, str], url: str = DEFAULT_EPMSI_URL) -> ProxyDiscovery:
    """Discovery from C{environ} alone: no system settings, whatever the OS."""
    return discover_proxy(url, environ=environ, platform="linux")


class EnvironmentTests(SynchronousTestCase):
    def test_https_proxy(self) -> None:
        """HTTPS_PROXY gives the proxy, named as the source in a plain sentence."""
        found = discover({"HTTPS_PROXY": "http://proxy.chu.local:3128"})
        self.assertEqual(found.proxy, "http://proxy.chu.local:3128")
        self.assertIsNone(found.user)
        self.assertEqual(found.source, "environment variable HTTPS_PROXY")
        self.assertFalse(found.bypassed or found.unresolved or found.direct)
        self.assertEqual(
            found.describe(),
            "This machine would reach https://www.epmsi.atih.sante.fr through the proxy "
            "http://proxy.chu.local:3128 (from environment variable HTTPS_PROXY).",
        )
        self.assertEqual(
            found.describe("fr"),
            "Ce poste joindrait https://www.epmsi.atih.sante.fr par le proxy "
            "http://proxy.chu.local:3128 (d'après la variable d'environnement HTTPS_PROXY).",
        )

    def test_lower_case_wins(self) -> None:
        """As in urllib, https_proxy wins over HTTPS_PROXY."""
        found = discover({"HTTPS_PROXY": "http://upper:1111", "https_proxy": "http://lower:2222"})
        self.assertEqual(found.proxy, "http://lower:2222")
        self.assertEqual(found.source, "environment variable https_proxy")

    def test_empty_lower_case_cancels(self) -> None:
        """As in urllib, an empty https_proxy cancels HTTPS_PROXY."""
        found = discover({"HTTPS_PROXY": "http://upper:1111", "https_proxy": ""})
        self.assertIsNone(found.proxy)
        self.assertEqual(found.source, "nothing found")

    def test_http_and_all_proxy_ignored(self) -> None:
        """As in urllib, HTTP_PROXY and ALL_PROXY do not apply to https://, but are mentioned."""
        found = discover({"HTTP_PROXY": "http://a:1", "ALL_PROXY": "http://b:2"})
        self.assertIsNone(found.proxy)
        self.assertTrue(found.direct)
        self.assertIn("ALL_PROXY and HTTP_PROXY are set", found.source)
        self.assertIn("HTTPS_PROXY", found.describe())

    def test_http_proxy_for_http_target(self) -> None:
        """The proxy variable is chosen by the target's scheme, as urllib does."""
        found = discover({"HTTP_PROXY": "http://a:1"}, url="http://example.org/")
        self.assertEqual(found.proxy, "http://a:1")

    def test_nothing_found(self) -> None:
        """No proxy variable: direct, said plainly."""
        found = discover({"PATH": "/usr/bin"})
        self.assertEqual(found, ProxyDiscovery(None, None, Text("nothing found")))
        self.assertTrue(found.direct)
        self.assertEqual(
            found.describe(),
            "No proxy setting found on this machine: e-PMSI would be reached directly.",
        )

    def test_scheme_less_value(self) -> None:
        """HOST:PORT without a scheme is an http:// proxy, as for urllib and curl."""
        found = discover({"HTTPS_PROXY": "Proxy.CHU.local:3128"})
        self.assertEqual(found.proxy, "http://proxy.chu.local:3128")

    def test_default_port(self) -> None:
        """A proxy without a port gets port 80, and the source says it was assumed."""
        found = discover({"HTTPS_PROXY": "http://proxy.chu.local/"})
        self.assertEqual(found.proxy, "http://proxy.chu.local:80")
        self.assertIn("port 80 assumed", found.source)

    def test_ipv6_proxy(self) -> None:
        """An IPv6 proxy keeps its brackets."""
        found = discover({"HTTPS_PROXY": "http://[fd00::1]:3128"})
        self.assertEqual(found.proxy, "http://[fd00::1]:3128")

    def test_user_kept_password_dropped(self) -> None:
        """The user name is kept (decoded); the password appears nowhere."""
        found = discover({"HTTPS_PROXY": "http://CHU%5Cjdupont:s3cret@proxy.chu.local:3128"})
        self.assertEqual(found.proxy, "http://proxy.chu.local:3128")
        self.assertEqual(found.user, "CHU\\jdupont")
        self.assertIn("as user CHU\\jdupont", found.describe())
        self.assertNotIn("s3cret", repr(found) + found.describe())

    def test_invalid_port(self) -> None:
        """A proxy with a bad port is unresolved, not direct."""
        found = discover({"HTTPS_PROXY": "http://proxy:abc"})
        self.assertIsNone(found.proxy)
        self.assertTrue(found.unresolved)
        self.assertFalse(found.direct)
        self.assertIn("not a valid proxy address", found.describe())


class UnsupportedProxyTests(SynchronousTestCase):
    def test_socks(self) -> None:
        """SOCKS proxies are reported as unsupported, with the password hidden."""
        for value in ("socks5://u:s3cret@socks.chu.local:1080", "socks4://socks.chu.local:1080"):
            found = discover({"HTTPS_PROXY": value})
            self.assertIsNone(found.proxy)
            self.assertTrue(found.unresolved)
            self.assertIn("SOCKS proxy, which e-POP does not support", found.source)
            self.assertNotIn("s3cret", found.source)

    def test_https_proxy_url(self) -> None:
        """A proxy reached over TLS is unsupported; the source suggests http:// if it is plain."""
        found = discover({"HTTPS_PROXY": "https://proxy.chu.local:3128"})
        self.assertIsNone(found.proxy)
        self.assertTrue(found.unresolved)
        self.assertIn("does not support", found.source)
        self.assertIn("write it as http://proxy.chu.local:3128", found.source)
        self.assertTrue(found.describe().startswith("Could not tell which proxy"))


class NoProxyTests(SynchronousTestCase):
    proxy: ClassVar[Mapping[str, str]] = {"HTTPS_PROXY": "http://proxy.chu.local:3128"}

    def assertBypassed(self, no_proxy: str, url: str = DEFAULT_EPMSI_URL) -> ProxyDiscovery:
        found = discover({**self.proxy, "NO_PROXY": no_proxy}, url)
        self.assertTrue(found.bypassed, no_proxy)
        self.assertIsNone(found.proxy)
        self.assertTrue(found.direct)
        return found

    def assertNotBypassed(self, no_proxy: str, url: str = DEFAULT_EPMSI_URL) -> None:
        found = discover({**self.proxy, "NO_PROXY": no_proxy}, url)
        self.assertFalse(found.bypassed, no_proxy)
        self.assertEqual(found.proxy, "http://proxy.chu.local:3128")

    def test_exact_host(self) -> None:
        """NO_PROXY naming e-PMSI's host excludes it, said plainly."""
        found = self.assertBypassed("localhost, www.epmsi.atih.sante.fr")
        self.assertEqual(found.source, "environment variable NO_PROXY excludes e-PMSI")
        self.assertEqual(
            found.describe(),
            "A proxy is configured, but environment variable NO_PROXY excludes e-PMSI: "
            "this machine would reach https://www.epmsi.atih.sante.fr directly.",
        )

    def test_domain_suffix(self) -> None:
        """A domain, with or without its leading dot, excludes its sub-domains."""
        self.assertBypassed(".atih.sante.fr")
        self.assertBypassed("atih.sante.fr")
        self.assertBypassed("SANTE.FR")

    def test_star(self) -> None:
        """NO_PROXY=* excludes every host."""
        self.assertBypassed("*")

    def test_ip_and_port(self) -> None:
        """IP addresses and HOST:PORT entries match as urllib matches them."""
        self.assertBypassed("10.1.2.3", url="https://10.1.2.3")
        self.assertBypassed("epmsi.test:8443", url="https://epmsi.test:8443")
        self.assertNotBypassed("10.1.2.4", url="https://10.1.2.3")

    def test_not_matching(self) -> None:
        """Other hosts, or a suffix not on a dot boundary, do not exclude e-PMSI."""
        self.assertNotBypassed("localhost,127.0.0.1,.chu.local")
        self.assertNotBypassed("tih.sante.fr")
        self.assertNotBypassed("")

    def test_lower_case_wins(self) -> None:
        """As in urllib, no_proxy wins over NO_PROXY, and is named as the source."""
        found = discover({**self.proxy, "NO_PROXY": "other.fr", "no_proxy": ".sante.fr"})
        self.assertTrue(found.bypassed)
        self.assertIn("no_proxy", found.source)

    def test_no_proxy_alone(self) -> None:
        """NO_PROXY without any proxy is simply "nothing found"."""
        found = discover({"NO_PROXY": "*"})
        self.assertFalse(found.bypassed)
        self.assertEqual(found.source, "nothing found")


class FakeSystemTests(SynchronousTestCase):
    """The OS settings' logic, fed fake settings so it runs on any OS."""

    def use_system(self, system: _SystemSettings | None) -> None:
        self.patch(system_proxy, "_system_settings", lambda platform: system)

    def registry(
        self, proxies: Mapping[str, str], bypass: bool = False, pac: str | None = None
    ) -> _SystemSettings:
        return _SystemSettings(
            system_proxy._WINDOWS_LABEL,
            proxies,
            lambda host: bypass,
            pac=pac,
            tls_means_http=True,
        )

    def test_registry_proxy(self) -> None:
        """The registry's proxy is used when the environment names none."""
        self.use_system(self.registry({"https": "http://proxy.chu.local:8080"}))
        found = discover_proxy(environ={}, platform="win32")
        self.assertEqual(found.proxy, "http://proxy.chu.local:8080")
        self.assertEqual(found.source, "Windows registry (Internet Settings)")
        self.assertIn("(d'après le registre Windows (Options Internet))", found.describe("fr"))

    def test_registry_https_prefix(self) -> None:
        """A registry proxy read as https:// is still a plain HTTP proxy (WinINet has no other)."""
        self.use_system(self.registry({"https": "https://proxy.chu.local:8080"}))
        found = discover_proxy(environ={}, platform="win32")
        self.assertEqual(found.proxy, "http://proxy.chu.local:8080")

    def test_environment_first(self) -> None:
        """The environment wins over the system's settings, as in urllib."""
        self.use_system(self.registry({"https": "http://registry:8080"}))
        found = discover_proxy(environ={"HTTPS_PROXY": "http://env:3128"}, platform="win32")
        self.assertEqual(found.proxy, "http://env:3128")

    def test_registry_override(self) -> None:
        """The registry's ProxyOverride excluding e-PMSI gives a bypassed answer."""
        self.use_system(self.registry({"https": "http://proxy.chu.local:8080"}, bypass=True))
        found = discover_proxy(environ={}, platform="win32")
        self.assertTrue(found.bypassed)
        self.assertIsNone(found.proxy)
        self.assertIn("Windows registry", found.source)

    def test_macos(self) -> None:
        """macOS network settings are named as such."""
        self.use_system(
            _SystemSettings("macOS network settings", {"https": "http://p:3128"}, lambda h: False)
        )
        found = discover_proxy(environ={}, platform="darwin")
        self.assertEqual(found.proxy, "http://p:3128")
        self.assertEqual(found.source, "macOS network settings")

    def test_system_without_https_proxy(self) -> None:
        """A system with no proxy for https:// is "nothing found"."""
        self.use_system(self.registry({"http": "http://p:3128"}))
        self.assertEqual(discover_proxy(environ={}, platform="win32").source, "nothing found")

    def test_registry_remote_pac(self) -> None:
        """A registry AutoConfigURL over http is reported, not downloaded."""
        self.use_system(
            self.registry({"https": "http://manual:8080"}, pac="http://wpad.chu.local/proxy.pac")
        )
        found = discover_proxy(environ={}, platform="win32")
        self.assertTrue(found.unresolved)
        self.assertIsNone(found.proxy)
        self.assertIn("http://wpad.chu.local/proxy.pac", found.source)
        self.assertIn("does not download", found.source)
        self.assertIn("also names the proxy http://manual:8080", found.source)

    def test_other_os_not_read(self) -> None:
        """Asking for another OS's settings than this one's finds nothing, without error."""
        for platform in ("win32", "darwin", "linux"):
            if platform != sys.platform:
                found = discover_proxy(environ={}, platform=platform)
                self.assertEqual(found.source, "nothing found")


class PacAnswerTests(SynchronousTestCase):
    """Reading FindProxyForURL's answer, without a JavaScript engine."""

    def test_first_proxy(self) -> None:
        """The first PROXY entry is the proxy; the source is the PAC file."""
        answer = "PROXY proxy.chu.local:3128; DIRECT"
        found = _from_pac_answer(DEFAULT_EPMSI_URL, answer, "PAC file x")
        self.assertEqual(found.proxy, "http://proxy.chu.local:3128")
        self.assertEqual(found.source, "PAC file x")

    def test_direct(self) -> None:
        """DIRECT first means direct, not unknown."""
        found = _from_pac_answer(DEFAULT_EPMSI_URL, "DIRECT; PROXY p:1", "PAC file x")
        self.assertIsNone(found.proxy)
        self.assertTrue(found.direct)
        self.assertIn("DIRECT", found.describe())

    def test_unsupported_entries_skipped(self) -> None:
        """SOCKS and HTTPS entries are skipped for the next PROXY entry."""
        found = _from_pac_answer(DEFAULT_EPMSI_URL, "SOCKS s:1080; HTTPS h:443; PROXY p:3128", "x")
        self.assertEqual(found.proxy, "http://p:3128")

    def test_only_unsupported(self) -> None:
        """An answer with nothing usable is unresolved and quoted."""
        found = _from_pac_answer(DEFAULT_EPMSI_URL, "SOCKS5 s:1080", "PAC file x")
        self.assertTrue(found.unresolved)
        self.assertIn("SOCKS5 s:1080", found.source)

    def test_no_answer(self) -> None:
        """An empty or missing answer is unresolved."""
        for answer in ("", None, 42):
            self.assertTrue(_from_pac_answer(DEFAULT_EPMSI_URL, answer, "PAC file x").unresolved)


class PacWithoutPypacTests(SynchronousTestCase):
    def test_pypac_missing(self) -> None:
        """Without pypac, a PAC file is reported with the command that installs it."""
        saved = sys.modules.pop("pypac.parser", None)
        sys.modules["pypac.parser"] = None  # type: ignore[assignment]  # import fails

        def restore() -> None:
            del sys.modules["pypac.parser"]
            if saved is not None:
                sys.modules["pypac.parser"] = saved

        self.addCleanup(restore)
        found = discover_proxy(environ={}, pac="/etc/epop/proxy.pac", platform="linux")
        self.assertTrue(found.unresolved)
        self.assertEqual(
            found.source,
            f"a PAC file is configured (/etc/epop/proxy.pac) but pypac is not installed: "
            f"{PAC_INSTALL_HINT}",
        )
        self.assertIn("pip install 'epop[pac]'", found.describe())

    def test_remote_pac_not_fetched(self) -> None:
        """An http(s) PAC URL is reported as needing a download, never fetched."""
        found = discover_proxy(environ={}, pac="https://wpad.chu.local/proxy.pac", platform="linux")
        self.assertTrue(found.unresolved)
        self.assertIn("does not download PAC files", found.source)


class PacFileTests(SynchronousTestCase):
    """Real PAC files evaluated by pypac; skipped without it."""

    skip = NO_PYPAC

    def write_pac(self, script: str = PAC_SCRIPT) -> Path:
        path = Path(self.mktemp() + ".pac").absolute()
        path.write_text(script, encoding="utf-8")
        return path

    def test_proxy_for_epmsi(self) -> None:
        """A PAC file answering PROXY for e-PMSI gives that proxy, from that file."""
        path = self.write_pac()
        found = discover_proxy(environ={}, pac=str(path), platform="linux")
        self.assertEqual(found.proxy, "http://proxy.chu.local:3128")
        self.assertEqual(found.source, f"PAC file {path}")

    def test_direct_for_others(self) -> None:
        """The same PAC file answering DIRECT for another host gives "direct"."""
        path = self.write_pac()
        found = discover_proxy("https://example.org", environ={}, pac=str(path), platform="linux")
        self.assertIsNone(found.proxy)
        self.assertTrue(found.direct)
        self.assertIn("answers DIRECT", found.source)

    def test_file_url(self) -> None:
        """A file:// URL names a local PAC file."""
        found = discover_proxy(environ={}, pac=self.write_pac().as_uri(), platform="linux")
        self.assertEqual(found.proxy, "http://proxy.chu.local:3128")

    def test_pac_wins_over_environment(self) -> None:
        """A PAC file the person names wins over the environment."""
        found = discover_proxy(
            environ={"HTTPS_PROXY": "http://env:1"}, pac=str(self.write_pac()), platform="linux"
        )
        self.assertEqual(found.proxy, "http://proxy.chu.local:3128")

    def test_registry_local_pac(self) -> None:
        """A registry AutoConfigURL naming a local file is evaluated before the manual proxy."""
        pac = str(self.write_pac())
        label = "Windows registry (Internet Settings)"
        system = _SystemSettings(label, {"https": "http://m:1"}, lambda h: False, pac=pac)
        self.patch(system_proxy, "_system_settings", lambda platform: system)
        found = discover_proxy(environ={}, platform="win32")
        self.assertEqual(found.proxy, "http://proxy.chu.local:3128")
        self.assertIn("named in Windows registry", found.source)

    def test_missing_file(self) -> None:
        """An unreadable PAC file is unresolved, saying why."""
        found = discover_proxy(environ={}, pac=self.mktemp(), platform="linux")
        self.assertTrue(found.unresolved)
        self.assertIn("cannot be read", found.source)

    def test_malformed(self) -> None:
        """A PAC file that is not valid JavaScript is unresolved, saying so."""
        path = self.write_pac("function (")
        found = discover_proxy(environ={}, pac=str(path), platform="linux")
        self.assertTrue(found.unresolved)
        self.assertIn(f"PAC file {path} could not be evaluated: its script has an error (", found.source)
        self.assertNotIn("\n", found.source)
        french = found.text().render("fr")
        self.assertIn(f": le fichier PAC {path} n'a pas pu être évalué : son script contient une erreur (", french)
        self.assertNotIn("Malformed", french)
