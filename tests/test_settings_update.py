"""
Saving settings into the relay's settings file: the keys change, and
everything the administrator wrote around them stays.
"""

from __future__ import annotations

import os
import stat

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SkipTest, TestCase

from epop.relay.saved_settings import relay_keys, save_settings
from epop.relay.settings import SettingsError, read_settings_file
from epop.settings_update import remove_password_file, update_settings_file, write_password_file

KEYS = relay_keys()


class UpdateTests(TestCase):
    def write(self, text: str | bytes, mode: int = 0o640) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(text.encode("utf-8") if isinstance(text, str) else text)
        os.chmod(path, mode)
        return path

    def read(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def test_replaces_in_place(self) -> None:
        """A value is replaced on its own line; comments, blanks, spelling and other keys stay."""
        path = self.write(
            "# The relay of the hospital\n"
            "[epop]\n"
            "; where it listens\n"
            "Listen = tcp:3358\n"
            "\n"
            "# who may connect\n"
            "allow =\n"
            "  10.1.2.3\n"
            "  # the lab\n"
            "  10.1.0.0/16\n"
            "idle-timeout   =   30\n"
        )
        save_settings(
            path, {"listen": ["tcp:4000:interface=127.0.0.1"], "allow": ["10.9.9.9"],
                   "require-tls": True}
        )
        self.assertEqual(
            self.read(path).decode(),
            "# The relay of the hospital\n"
            "[epop]\n"
            "; where it listens\n"
            "Listen =\n"
            "    tcp:4000:interface=127.0.0.1\n"
            "\n"
            "# who may connect\n"
            "allow =\n"
            "  10.9.9.9\n"
            "  # the lab\n"
            "idle-timeout   =   30\n"
            "require-tls = yes\n",
        )

    def test_removes_key_not_comment(self) -> None:
        """None removes the key's own lines; the comment above it stays."""
        path = self.write("[epop]\n# the proxy's user\nproxy-user = alice\nno-check = yes\n")
        save_settings(path, {"proxy-user": None, "no-check": False})
        self.assertEqual(self.read(path), b"[epop]\n# the proxy's user\nno-check = no\n")

    def test_added_before_trailing_comments(self) -> None:
        """A new key goes after the section's last key, before comments that end the file."""
        path = self.write("[epop]\nallow = 10.0.0.1\n\n# allow = 10.0.0.2\n")
        save_settings(path, {"proxy-user": "bob"})
        self.assertEqual(
            self.read(path), b"[epop]\nallow = 10.0.0.1\nproxy-user = bob\n\n# allow = 10.0.0.2\n"
        )

    def test_keeps_crlf_bom_and_mode(self) -> None:
        """A Notepad file keeps its byte order mark, CRLF line ends and mode."""
        path = self.write(b"\xef\xbb\xbf[epop]\r\n# note\r\nallow = 10.0.0.1", 0o640)
        save_settings(path, {"allow": ["10.0.0.2", "10.0.0.3"], "proxy-user": "bob"})
        self.assertEqual(
            self.read(path),
            b"\xef\xbb\xbf[epop]\r\n# note\r\nallow =\r\n    10.0.0.2\r\n    10.0.0.3\r\n"
            b"proxy-user = bob\r\n",
        )
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o640)

    def test_keeps_owner(self) -> None:
        """Rewritten by root, a file keeps its owner and group (the relay's group reads it)."""
        if os.geteuid() != 0:
            raise SkipTest("only root can give a file to another user")
        path = self.write(b"[epop]\n", 0o640)
        os.chown(path, 4321, 8765)
        save_settings(path, {"no-check": True})
        found = os.stat(path)
        self.assertEqual((found.st_uid, found.st_gid, stat.S_IMODE(found.st_mode)),
                         (4321, 8765, 0o640))

    def test_symbolic_link_stays(self) -> None:
        """A settings file reached by a symbolic link: the file it names changes, the link stays."""
        target = self.write(b"[epop]\n")
        link = self.mktemp()
        os.symlink(os.path.abspath(target), link)
        save_settings(link, {"no-check": True})
        self.assertTrue(os.path.islink(link))
        self.assertEqual(self.read(target), b"[epop]\nno-check = yes\n")

    def test_creates_missing_file(self) -> None:
        """A missing file is made with the header as comments, the section and the keys, 0644."""
        path = self.mktemp()
        save_settings(path, {"allow": ["10.0.0.1"]}, header="Saved by the console\nof e-POP")
        self.assertEqual(
            self.read(path),
            b"# Saved by the console\n# of e-POP\n[epop]\nallow =\n    10.0.0.1\n",
        )
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o644)
        self.assertEqual(read_settings_file(path, KEYS).values, {"allow": ("10.0.0.1",)})

    def test_file_without_section(self) -> None:
        """A file without the section does not read as the relay's: refused, left alone."""
        path = self.write("# nothing yet\n")
        error = self.assertRaises(SettingsError, save_settings, path, {"no-check": True})
        self.assertIn("no [epop] section", str(error))
        self.assertEqual(self.read(path), b"# nothing yet\n")

    def test_refuses_unreadable_file(self) -> None:
        """A file the relay cannot read is refused with the reader's message and left alone."""
        text = b"[epop]\nallow = 10.0.0.1\nthis is not a setting\n"
        path = self.write(text)
        error = self.assertRaises(SettingsError, save_settings, path, {"no-check": True})
        self.assertIn("line 3", str(error))
        self.assertEqual(self.read(path), text)

    def test_invalid_value_put_back(self) -> None:
        """A value the relay would refuse is not left in the file: it is put back as it was."""
        text = b"[epop]\n# keep me\nidle-timeout = 30\n"
        path = self.write(text)
        error = self.assertRaises(
            SettingsError, save_settings, path, {"idle-timeout": "soon"}
        )
        self.assertIn("idle-timeout", str(error))
        self.assertEqual(self.read(path), text)
        missing = self.mktemp()
        self.assertRaises(SettingsError, save_settings, missing, {"listen": ["nonsense:x"]})
        self.assertFalse(os.path.exists(missing))

    def test_unsafe_values(self) -> None:
        """A value or key that cannot be written safely is a ValueError naming the key."""
        path = self.write(b"[epop]\n")
        for changes, word in [
            ({"proxy-user": "a\nno-check = yes"}, "proxy-user"),
            ({"proxy-user": "a\u2028b"}, "proxy-user"),
            ({"allow": ["10.0.0.1", "# x"]}, "allow"),
            ({"allow": "10.0.0.1"}, "allow"),
            ({"proxy-user": ""}, "proxy-user"),
            ({"proxy-user": " bob"}, "proxy-user"),
            ({"no-check": "yes"}, "no-check"),
            ({"Bad Key": "1"}, "Bad Key"),
            ({"colour": "blue"}, "colour"),
        ]:
            error = self.assertRaises(ValueError, save_settings, path, changes)
            self.assertIn(word, str(error))
        self.assertEqual(self.read(path), b"[epop]\n")


# Random files: comments, blank lines and keys in any order and spelling.
_VALUES = {
    "proxy-user": st.sampled_from(["alice", "bob", "DOMAIN\\carol", "é ü"]),
    "idle-timeout": st.sampled_from(["30", "0.5", "600"]),
    "require-tls": st.booleans(),
    "no-check": st.booleans(),
    "allow": st.lists(st.sampled_from(["10.0.0.1", "10.1.0.0/16", "192.168.1.7", "::1"]),
                      max_size=3),
    "listen": st.lists(st.sampled_from(["tcp:3358", "tcp:4000:interface=127.0.0.1"]),
                       min_size=1, max_size=2),
}
_comment = st.builds(
    lambda mark, indent, text: f"{indent}{mark}{text}",
    st.sampled_from(["#", ";"]),
    st.sampled_from(["", "  "]),
    st.text(st.characters(blacklist_categories=["Cc", "Cs", "Zl", "Zp"]), max_size=10),
)


@st.composite
def _files(draw):  # type: ignore[no-untyped-def]
    keys = draw(st.lists(st.sampled_from(sorted(_VALUES)), unique=True))
    lines: list[str] = draw(st.lists(_comment, max_size=2)) + ["[epop]"]
    for key in keys:
        lines += draw(st.lists(st.one_of(_comment, st.just("")), max_size=2))
        spelled = "".join(
            c.upper() if draw(st.booleans()) else c for c in key
        )
        value = draw(_VALUES[key])
        spacing = draw(st.sampled_from([" = ", "=", "  =  "]))
        if isinstance(value, bool):
            lines.append(f"{spelled}{spacing}{draw(st.sampled_from(['yes', 'True', '0', 'no']))}")
        elif isinstance(value, list):
            lines.append(f"{spelled}{spacing}".rstrip())
            for entry in value:
                lines += draw(st.lists(_comment, max_size=1))
                lines.append(f"   {entry}")
        else:
            lines.append(f"{spelled}{spacing}{value}")
    lines += draw(st.lists(st.one_of(_comment, st.just("")), max_size=2))
    ending = draw(st.sampled_from(["\n", "\r\n"]))
    bom = draw(st.sampled_from(["", "\ufeff"]))
    return bom + ending.join(lines) + draw(st.sampled_from(["", ending]))


@st.composite
def _changes(draw):  # type: ignore[no-untyped-def]
    keys = draw(st.lists(st.sampled_from(sorted(_VALUES)), unique=True))
    return {key: draw(st.one_of(st.none(), _VALUES[key])) for key in keys}


class SyntaxOnlyTests(TestCase):
    def test_any_keys(self) -> None:
        """Without a program's reader, any key of the shared syntax is kept and changed."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"[epop]\n# the workstation's\nrelay = 10.0.0.1:3358\nlang = fr\n")
        update_settings_file(path, {"relay": "10.0.0.2:3358", "colours": ["red", "blue"],
                                    "lang": None, "quiet": True})
        with open(path, "rb") as f:
            self.assertEqual(
                f.read(),
                b"[epop]\n# the workstation's\nrelay = 10.0.0.2:3358\ncolours =\n    red\n"
                b"    blue\nquiet = yes\n",
            )

    def test_syntax_error_refused(self) -> None:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"[epop]\nnot a line\n")
        error = self.assertRaises(SettingsError, update_settings_file, path, {"quiet": True})
        self.assertIn("line 2", str(error))
        for changes, word in [({"Bad Key": "1"}, "Bad Key"), ({"x": "a\nb"}, "line break"),
                              ({"x": 3}, "not a text")]:
            error = self.assertRaises(ValueError, update_settings_file, path, changes)
            self.assertIn(word, str(error))


class RandomUpdateTests(TestCase):
    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_files(), _changes())
    def test_reads_back(self, text: str, changes: dict) -> None:  # type: ignore[type-arg]
        """Any valid file, any changes: the file reads back with them, comments in order."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(text.encode("utf-8"))
        before = read_settings_file(path, KEYS).values
        save_settings(path, changes)
        after = read_settings_file(path, KEYS).values
        expected = dict(before)
        for key, value in changes.items():
            if value is None:
                expected.pop(key, None)
            elif isinstance(value, list):
                expected[key] = tuple(value)
            elif isinstance(value, bool):
                expected[key] = value
            else:
                expected[key] = KEYS.parameters[key](value) if KEYS.parameters.get(key) else value
        self.assertEqual(after, expected)
        with open(path, "rb") as f:
            data = f.read().decode("utf-8")

        def comments(text: str) -> list[str]:
            return [line.strip() for line in text.splitlines()
                    if line.strip().startswith(("#", ";"))]

        self.assertEqual(comments(data), comments(text))
        self.assertEqual(data.startswith("\ufeff"), text.startswith("\ufeff"))
        if "\r\n" in text:
            self.assertNotIn("\n", data.replace("\r\n", ""))
        else:
            self.assertNotIn("\r", data)


class PasswordFileTests(TestCase):
    def test_written_0600(self) -> None:
        path = self.mktemp()
        write_password_file(path, "s3cret é")
        with open(path, "rb") as f:
            self.assertEqual(f.read(), "s3cret é\n".encode())
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        remove_password_file(path)
        self.assertFalse(os.path.exists(path))
        remove_password_file(path)  # already gone: fine

    def test_refused(self) -> None:
        path = self.mktemp()
        for password, word in [("", "empty"), ("a\nb", "line break"), ("a\rb", "line break")]:
            error = self.assertRaises(ValueError, write_password_file, path, password)
            self.assertIn(word, str(error))
        self.assertFalse(os.path.exists(path))
