"""
One rule for a proxy setting (L{epop.epmsi.proxy_setting}), wherever it is
typed: the relay's and C{epop send}'s C{--proxy} (L{ProxyConfig.from_url},
L{resolve_proxy}) and the workstation's saved C{proxy}.  The cases below are
those the two used to disagree on.
"""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from epop.epmsi.proxy import ProxyConfig, resolve_proxy
from epop.epmsi.proxy_setting import SYSTEM, is_system, parse_proxy_url
from epop.workstation.settings import ClientSettings, SettingsError

#: A value once accepted by one side only, and what both now say about it.
DISAGREED = [
    ("http://dim:@proxy:3128", "do not put the proxy password in the URL"),
    ("http://proxy:0", "has an invalid port"),
    ("http://proxy:3128#top", "must not have a path, query or fragment"),
    ("http://proxy :3128", "must not contain spaces or control characters"),
]


class SameRuleTests(SynchronousTestCase):
    def workstation(self, value: str) -> str:
        return str(self.assertRaises(SettingsError, ClientSettings(Path("x.ini")).set, "proxy", value))

    def command_line(self, value: str) -> str:
        return str(self.assertRaises(ValueError, ProxyConfig.from_url, value))

    def test_once_disagreed(self) -> None:
        """Each value is refused on both sides, with the same explanation."""
        for value, message in DISAGREED:
            self.assertIn(message, self.workstation(value), value)
            self.assertIn(message, self.command_line(value), value)

    def test_same_words_where_the_setting_is_the_same(self) -> None:
        """Apart from where the account goes, the two messages are one."""
        for value, _ in DISAGREED:
            if "@" not in value:
                self.assertEqual(self.workstation(value), self.command_line(value), value)

    def test_password_goes_to_its_own_setting(self) -> None:
        """Each message says where the password goes on its side."""
        self.assertIn("set them with proxy-user and proxy-password", self.workstation("http://u:pw@p:1"))
        message = self.command_line("http://u:pw@p:1")
        self.assertIn("a password file or the EPOP_PROXY_PASSWORD environment variable", message)

    def test_once_refused_by_the_workstation(self) -> None:
        """
        What the relay always took, the workstation now takes too: HOST:PORT
        alone, and a user name in the URL (the relay's --proxy-user wins).
        """
        settings = ClientSettings(Path("x.ini"))
        settings.set("proxy", "proxy.chu.local:3128")
        self.assertEqual(settings.get("proxy"), "http://proxy.chu.local:3128")
        settings.set("proxy", "http://dim@Proxy:3128")
        self.assertEqual(settings.get("proxy"), "http://dim@proxy:3128")
        self.assertEqual(ProxyConfig.from_url("http://dim@proxy:3128").user, "dim")
        self.assertEqual(ProxyConfig.from_url("http://dim@proxy:3128", user="svc").user, "svc")
        self.assertIsNone(ProxyConfig.from_url("http://@proxy:3128").user)

    def test_password_never_repeated(self) -> None:
        """A refused URL with a password in it is never shown with the password."""
        for value in ("http://u:s3cret@p:abc", "socks5://u:s3cret@p:1", "u:s3cret@p", "http://u:s3cret@p:1"):
            self.assertNotIn("s3cret", self.workstation(value), value)
            self.assertNotIn("s3cret", self.command_line(value), value)

    def test_system_in_any_case(self) -> None:
        """'system' is a word, not a host: any case, on both sides, one constant."""
        self.assertTrue(is_system(" System "))
        self.assertFalse(is_system("http://system:3128"))
        settings = ClientSettings(Path("x.ini"))
        settings.set("proxy", "SYSTEM")
        self.assertEqual(settings.get("proxy"), SYSTEM)
        proxy, source = resolve_proxy("System", "https://epmsi.example", environ={})
        self.assertIsNone(proxy)
        self.assertIn("No proxy", source)

    def test_accepted_alike(self) -> None:
        """A good URL is written back one way: host in lower case, no trailing slash."""
        for value in ("HTTP://Proxy.CHU.local:3128/", " http://proxy.chu.local:3128"):
            self.assertEqual(parse_proxy_url(value, credentials="x").url, "http://proxy.chu.local:3128")
            self.assertEqual(ProxyConfig.from_url(value), ProxyConfig("proxy.chu.local", 3128))
        self.assertEqual(parse_proxy_url("http://[fd00::1]:8080", credentials="x").url, "http://[fd00::1]:8080")
