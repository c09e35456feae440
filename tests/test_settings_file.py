"""
The relay's and the workstation's settings files are read by one reader
(L{epop.settings_file}): the same syntax, the same mistakes found on the
same lines, one error type; only the words differ.
"""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from epop import settings_file
from epop.relay import settings as relay_settings
from epop.relay import tap
from epop.workstation import settings as workstation_settings
from epop.workstation.settings import ClientSettings


class OneReaderTests(SynchronousTestCase):
    def write(self, text: str | bytes) -> Path:
        path = Path(self.mktemp()).absolute()
        if isinstance(text, str):
            text = text.encode("utf-8")
        path.write_bytes(text)
        return path

    def relay(self, text: str | bytes) -> dict:
        path = self.write(text)
        keys = relay_settings.SettingKeys.of(tap.Options())
        return dict(relay_settings.read_settings_file(str(path), keys).values)

    def workstation(self, text: str | bytes) -> dict:
        return dict(ClientSettings.load(self.write(text)).items_for_display())

    def test_one_error_type(self) -> None:
        self.assertIs(relay_settings.SettingsError, settings_file.SettingsError)
        self.assertIs(workstation_settings.SettingsError, settings_file.SettingsError)
        self.assertTrue(issubclass(relay_settings.RelaySettingsError, settings_file.SettingsError))

    def test_same_syntax(self) -> None:
        """Byte order mark, comments, case, spaces around '=', a spaced section name."""
        head = b"\xef\xbb\xbf# made by IT\n\n[ epop ]\n; a comment\n"
        self.assertEqual(self.relay(head + b"JOURNAL=j.jsonl\nepmsi =  https://e.example\n"),
                         {"journal": "j.jsonl", "epmsi": "https://e.example"})
        self.assertEqual(self.workstation(head + b"FIELD=theFile\nto =  /u.do\n"),
                         {"field": "theFile", "to": "/u.do"})

    def test_continuation_lines(self) -> None:
        """An indented line continues the value above: a list for the relay, refused for a workstation."""
        self.assertEqual(self.relay("[epop]\nallow = 10.0.0.0/8\n\n    # one more\n    ::1\n"),
                         {"allow": ("10.0.0.0/8", "::1")})
        path = self.write("[epop]\nmode = relay\n  relay = 10.1.2.3\n")
        error = self.assertRaises(settings_file.SettingsError, ClientSettings.load, path)
        self.assertEqual(
            str(error),
            f"{path}, line 2: mode takes one line: an indented line continues the value above it, "
            "so start each setting at the beginning of its line",
        )

    def test_same_mistakes_same_lines(self) -> None:
        """Each mistake is found on the same line by both, and reported as a SettingsError."""
        cases = [
            ("# c\nfield = x\n", "line 2:"),
            ("[epop]\n\n[other]\n", "other"),
            ("[epop]\n# c\nfield x\n", "line 3:"),
            ("[epop]\n[epop\n", "line 2:"),
            ("[epop]\nproxy = http://p:1\n\nproxy = http://p:2\n", "line 4:"),
            ("[epop]\n[epop]\n", "line 2:"),
            (b"[epop]\nproxy-user = Ren\xe9\n", "UTF-8"),
        ]
        for text, expected in cases:
            for read in (self.relay, self.workstation):
                error = self.assertRaises(settings_file.SettingsError, read, text)
                self.assertIn(expected, str(error), (text, read.__name__))

    def test_missing_file(self) -> None:
        """A workstation without a file has no settings; a relay's --config must exist."""
        missing = Path(self.mktemp()).absolute()
        self.assertEqual(ClientSettings.load(missing).items_for_display(), [])
        keys = relay_settings.SettingKeys.of(tap.Options())
        self.assertRaises(settings_file.SettingsError, relay_settings.read_settings_file, str(missing), keys)

    def test_mistake_on_a_continuation_line(self) -> None:
        """A check that names one line of a value (ValueLineError) is reported at that line."""

        def check(key: str, value: str) -> str:
            for index, line in enumerate(value.split("\n")):
                if line == "bad":
                    raise settings_file.ValueLineError(f"{key}: {line!r} is bad", index)
            if value == "wrong":
                raise ValueError(f"{key}: {value!r} is wrong")
            return value

        wording = relay_settings._WORDING
        for text, line in [
            ("[epop]\nkey = bad\n", 2),
            ("[epop]\nkey = good\n    good\n\n    # c\n    bad\n", 6),
            ("[epop]\nkey =\n    bad\n", 3),
            ("[epop]\n\nkey = wrong\n", 3),
        ]:
            path = self.write(text)
            error = self.assertRaises(settings_file.SettingsError, settings_file.read_section, path, wording, check)
            self.assertTrue(str(error).startswith(f"{path}, line {line}: key: "), (text, str(error)))
