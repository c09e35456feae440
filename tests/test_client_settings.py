"""Tests for L{epop.workstation.settings}: the workstation's settings file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from epop.workstation.settings import (
    SETTING_DESCRIPTIONS,
    SETTING_KEYS,
    ClientSettings,
    SettingsError,
    settings_path,
)

POSIX_ONLY = None if os.name == "posix" else "file modes are POSIX-only"

FULL = {
    "mode": "direct",
    "relay": "relay.chu.local:4000",
    "epmsi": "https://www.epmsi.atih.sante.fr",
    "proxy": "http://proxy.chu.local:3128",
    "proxy-user": "CHU\\jdupont",
    "proxy-password": "s3cret;#=x",
    "to": "/syriusUpload.do",
    "field": "fichier",
}


class Fixtures(SynchronousTestCase):
    def folder(self) -> Path:
        path = Path(self.mktemp()).absolute()
        path.mkdir()
        return path

    def write(self, text: str) -> Path:
        path = self.folder() / "client.ini"
        path.write_text(text, encoding="utf-8")
        return path

    def assertError(self, message: str, call: object, *args: object) -> str:
        """C{call} raises L{SettingsError} whose text contains C{message}."""
        error = self.assertRaises(SettingsError, call, *args)
        self.assertIn(message, str(error))
        return str(error)


class RoundTripTests(Fixtures):
    def test_round_trip(self) -> None:
        """Every key set, saved and loaded again reads back the same."""
        ca = self.folder() / "ca.pem"
        ca.write_text("-----BEGIN CERTIFICATE-----\n")
        path = self.folder() / "client.ini"
        settings = ClientSettings(path)
        for key, value in FULL.items():
            settings.set(key, value)
        settings.set("ca-file", str(ca))
        settings.save()
        loaded = ClientSettings.load(path)
        self.assertEqual(loaded.path, path)
        for key in SETTING_KEYS:
            self.assertEqual(loaded.get(key), settings.get(key), key)
        self.assertEqual(loaded.get("proxy-password"), "s3cret;#=x")
        self.assertIn("[epop]\n", path.read_text())

    def test_missing_file(self) -> None:
        """A missing file is empty settings, not an error."""
        settings = ClientSettings.load(self.folder() / "none.ini")
        self.assertEqual(settings.items_for_display(), [])
        self.assertIsNone(settings.get("mode"))

    def test_unset(self) -> None:
        """An unset key is gone after save and load; unsetting it again is fine."""
        path = self.folder() / "client.ini"
        settings = ClientSettings(path, {"mode": "relay", "relay": "relay.chu.local"})
        settings.unset("relay")
        settings.unset("relay")
        settings.save()
        loaded = ClientSettings.load(path)
        self.assertIsNone(loaded.get("relay"))
        self.assertEqual(loaded.get("mode"), "relay")

    def test_save_replaces(self) -> None:
        """Saving again replaces the file and leaves no temporary file behind."""
        path = self.folder() / "client.ini"
        settings = ClientSettings(path, {"mode": "relay"})
        settings.save()
        settings.set("mode", "direct")
        settings.save()
        self.assertEqual(ClientSettings.load(path).get("mode"), "direct")
        self.assertEqual(os.listdir(path.parent), ["client.ini"])

    def test_write_error(self) -> None:
        """A file that cannot be replaced gives a SettingsError naming it, and no leftovers."""
        path = self.folder() / "client.ini"
        path.mkdir()  # os.replace cannot put a file over a folder
        self.assertError(f"cannot write settings file {path}", ClientSettings(path).save)
        self.assertEqual(os.listdir(path.parent), ["client.ini"])

    def test_comments_and_bom(self) -> None:
        """Comments, blank lines, upper-case keys and a Notepad byte order mark are accepted."""
        path = self.folder() / "client.ini"
        path.write_bytes(
            b"\xef\xbb\xbf# made by IT\n\n[epop]\n; relay of building B\nMODE = relay\n"
            b"relay=10.1.2.3\n"
        )
        settings = ClientSettings.load(path)
        self.assertEqual(settings.get("mode"), "relay")
        self.assertEqual(settings.get("relay"), "10.1.2.3")

    def test_items_for_display(self) -> None:
        """Set keys are listed in SETTING_KEYS order, the password as "(set)" only."""
        settings = ClientSettings(Path("x.ini"), {"to": "/u.do", "proxy-password": "s3cret"})
        settings.set("mode", "relay")
        self.assertEqual(
            settings.items_for_display(),
            [("mode", "relay"), ("proxy-password", "(set)"), ("to", "/u.do")],
        )
        self.assertNotIn("s3cret", repr(settings))

    def test_every_key_described(self) -> None:
        """Every key has a one-line description for help texts."""
        self.assertEqual(sorted(SETTING_DESCRIPTIONS), sorted(SETTING_KEYS))


class ValidationTests(Fixtures):
    def setUp(self) -> None:
        self.settings = ClientSettings(Path("client.ini"))

    def rejects(self, key: str, value: str, message: str) -> None:
        """Setting C{value} fails with C{message} and keeps the previous value."""
        before = self.settings.get(key)
        self.assertError(message, self.settings.set, key, value)
        self.assertEqual(self.settings.get(key), before)

    def test_unknown_key(self) -> None:
        """An unknown key is refused everywhere, listing the valid keys."""
        text = self.assertError("unknown setting 'server'", self.settings.set, "server", "x")
        self.assertIn(", ".join(SETTING_KEYS), text)
        self.assertError("unknown setting", self.settings.get, "server")
        self.assertError("unknown setting", self.settings.unset, "server")

    def test_mode(self) -> None:
        """mode is relay or direct, any case."""
        self.settings.set("mode", "DIRECT")
        self.assertEqual(self.settings.get("mode"), "direct")
        self.rejects("mode", "fast", "'relay' or 'direct'")

    def test_relay(self) -> None:
        """relay is HOST or HOST:PORT with a port from 1 to 65535."""
        self.settings.set("relay", "[fd00::1]:4000")
        for bad in ("relay:0", "relay:70000", "relay:abc", ":4000"):
            self.rejects("relay", bad, "relay")
        self.rejects("relay", "relay:70000", "expected a number from 1 to 65535")

    def test_epmsi(self) -> None:
        """epmsi is an https:// origin without a path; a trailing slash is dropped."""
        self.settings.set("epmsi", "https://epmsi.test:8443/")
        self.assertEqual(self.settings.get("epmsi"), "https://epmsi.test:8443")
        self.rejects("epmsi", "http://www.epmsi.atih.sante.fr", "must start with https://")
        self.rejects("epmsi", "https://www.epmsi.atih.sante.fr/upload", "without a path")

    def test_ca_file(self) -> None:
        """ca-file must exist when set, and is stored as an absolute path."""
        ca = self.folder() / "ca.pem"
        ca.write_text("pem")
        relative = os.path.relpath(ca)
        self.settings.set("ca-file", relative)
        self.assertEqual(self.settings.get("ca-file"), str(ca))
        self.rejects("ca-file", str(ca) + ".missing", "no such file")

    def test_proxy(self) -> None:
        """proxy is http://HOST:PORT (normalized) or "system"."""
        self.settings.set("proxy", "HTTP://Proxy.CHU.local:3128/")
        self.assertEqual(self.settings.get("proxy"), "http://proxy.chu.local:3128")
        self.settings.set("proxy", "System")
        self.assertEqual(self.settings.get("proxy"), "system")

    def test_proxy_errors(self) -> None:
        """Bad proxies say what is wrong and that http://HOST:PORT or "system" is expected."""
        cases = {
            "socks5://s:1080": "only http:// proxies",
            "https://p:3128": "only http:// proxies",
            "http://p": "has no port",
            "http://p:0": "invalid port",
            "http://p:99999": "invalid port",
            "http://:3128": "no host name",
            "http://p:3128/path": "must not have a path",
        }
        for value, message in cases.items():
            text = self.assertError(message, self.settings.set, "proxy", value)
            self.assertIn("http://HOST:PORT", text)
        self.rejects("proxy", "http://u:s3cret@p:3128", "set them with proxy-user")
        # One rule with the relay's --proxy, which always read HOST:PORT as http://.
        self.settings.set("proxy", "proxy.chu.local:3128")
        self.assertEqual(self.settings.get("proxy"), "http://proxy.chu.local:3128")

    def test_to(self) -> None:
        """to is a path starting with a slash."""
        self.settings.set("to", "/syriusUpload.do")
        self.rejects("to", "syriusUpload.do", "starting with '/'")
        self.rejects("to", "/a b", "without spaces")

    def test_one_line_values(self) -> None:
        """Values cannot hold line breaks or be empty; a password cannot be padded with spaces."""
        self.rejects("field", "a\nmode = direct", "on one line")
        self.rejects("field", "   ", "field is empty")
        self.rejects("proxy-user", "", "proxy-user is empty")
        self.rejects("proxy-password", " s3cret", "cannot start or end with a space")


class MalformedFileTests(Fixtures):
    def test_no_section(self) -> None:
        """A key before the [epop] header is refused, naming the file and line."""
        path = self.write("mode = relay\n")
        self.assertError(f"{path}, line 1:", ClientSettings.load, path)

    def test_other_section(self) -> None:
        """Another section than [epop] is refused."""
        path = self.write("[epop]\nmode = relay\n[server]\n")
        self.assertError("line 3: unexpected '[server]'", ClientSettings.load, path)

    def test_not_key_value(self) -> None:
        """A line without "=" is refused, quoting it."""
        path = self.write("[epop]\nmode relay\n")
        expected = "line 2: expected 'key = value', got 'mode relay'"
        self.assertError(expected, ClientSettings.load, path)

    def test_unknown_key(self) -> None:
        """An unknown key in the file is refused with its line and the valid keys."""
        path = self.write("[epop]\nmode = relay\nserver = x\n")
        text = self.assertError("line 3: unknown setting 'server'", ClientSettings.load, path)
        self.assertIn("proxy-password", text)

    def test_bad_value(self) -> None:
        """A bad value in the file is refused with its line and what is expected."""
        path = self.write("[epop]\nproxy = socks5://s:1080\n")
        self.assertError("line 2: proxy", ClientSettings.load, path)

    def test_duplicate(self) -> None:
        """A key written twice is refused, naming both lines."""
        path = self.write("[epop]\nmode = relay\n\nmode = direct\n")
        self.assertError("line 4: mode is set twice (first on line 2)", ClientSettings.load, path)

    def test_not_utf8(self) -> None:
        """A file that is not UTF-8 is refused, asking for UTF-8."""
        path = self.folder() / "client.ini"
        path.write_bytes(b"[epop]\nproxy-user = Ren\xe9\n")
        self.assertError("not UTF-8", ClientSettings.load, path)

    def test_unreadable(self) -> None:
        """A path that cannot be read (here a folder) is a SettingsError, not an OSError."""
        self.assertError("cannot read settings file", ClientSettings.load, self.folder())


class PermissionTests(Fixtures):
    skip = POSIX_ONLY

    def setUp(self) -> None:
        old = os.umask(0)  # the most permissive umask: modes must not depend on it
        self.addCleanup(os.umask, old)

    def test_file_mode(self) -> None:
        """The file is 0600 after every save, even if it was readable by others before."""
        path = self.folder() / "client.ini"
        path.write_text("[epop]\n")
        path.chmod(0o644)
        ClientSettings(path, {"proxy-password": "s3cret"}).save()
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)

    def test_folder_mode(self) -> None:
        """Missing folders are created 0700; an existing parent is left alone."""
        base = self.folder()
        base.chmod(0o755)
        path = base / "config" / "epop" / "client.ini"
        ClientSettings(path, {"mode": "relay"}).save()
        self.assertEqual(stat.S_IMODE((base / "config").stat().st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(path.parent.stat().st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(base.stat().st_mode), 0o755)


class SettingsPathTests(SynchronousTestCase):
    def test_epop_config(self) -> None:
        """EPOP_CONFIG wins on every platform."""
        for platform in ("linux", "win32", "darwin"):
            path = settings_path({"EPOP_CONFIG": "/srv/epop.ini", "APPDATA": "x"}, platform)
            self.assertEqual(path, Path("/srv/epop.ini"))

    def test_windows_appdata(self) -> None:
        """On Windows the file is in %APPDATA%\\epop."""
        appdata = "C:\\Users\\jdupont\\AppData\\Roaming"
        path = settings_path({"APPDATA": appdata, "XDG_CONFIG_HOME": "/x"}, "win32")
        self.assertEqual(path, Path(appdata) / "epop" / "client.ini")

    def test_windows_without_appdata(self) -> None:
        """Without APPDATA, Windows falls back to the profile's AppData\\Roaming."""
        path = settings_path({"USERPROFILE": "/profile"}, "win32")
        self.assertEqual(path, Path("/profile") / "AppData" / "Roaming" / "epop" / "client.ini")

    def test_xdg(self) -> None:
        """Elsewhere $XDG_CONFIG_HOME/epop/client.ini, if absolute."""
        path = settings_path({"XDG_CONFIG_HOME": "/cfg", "HOME": "/home/j"}, "linux")
        self.assertEqual(path, Path("/cfg/epop/client.ini"))
        path = settings_path({"XDG_CONFIG_HOME": "relative", "HOME": "/home/j"}, "linux")
        self.assertEqual(path, Path("/home/j/.config/epop/client.ini"))

    def test_home(self) -> None:
        """Without XDG_CONFIG_HOME, ~/.config/epop/client.ini (macOS too)."""
        for platform in ("linux", "darwin"):
            path = settings_path({"HOME": "/home/j"}, platform)
            self.assertEqual(path, Path("/home/j/.config/epop/client.ini"))
