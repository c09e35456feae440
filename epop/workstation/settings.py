"""
The workstation's settings, typed "once and for all": where to send (relay
or direct), which e-PMSI, which proxy, and the upload defaults, so a daily
upload is just C{epop send FILE}.

They live in a small INI file with one section, C{[epop]}, one C{key = value}
a line; C{#} or C{;} starts a comment line.  It is read like the relay's
(L{epop.settings_file}), with which it shares L{SettingsError}. The file may hold the proxy's
password, so L{ClientSettings.save} always writes it readable by its owner
only (on POSIX), and L{ClientSettings.items_for_display} never shows it.

Values are checked when set I{and} when loaded, so a hand-edited mistake is
reported with the file and line instead of failing later in the middle of an
upload.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from cryptography import x509

from epop.addressing import RELAY_ADDRESS_HELP
from epop.certificates import check_authority_file
from epop.epmsi.proxy_setting import SYSTEM, is_system, parse_proxy_url
from epop.workstation.client import RelayAddress
from epop.epmsi.origin import EpmsiOrigin

from epop.files import write_atomically
from epop.messages import Text, reason_of, system_reason
from epop.settings_file import SECTION, SettingsError, Wording, read_section

__all__ = [
    "SETTING_DESCRIPTIONS",
    "SETTING_KEYS",
    "ClientSettings",
    "SettingsError",
    "settings_path",
]

#: Every key the C{[epop]} section may hold, in display order.
SETTING_KEYS: tuple[str, ...] = (
    "mode",
    "relay",
    "tls",
    "relay-ca",
    "epmsi",
    "ca-file",
    "proxy",
    "proxy-user",
    "proxy-password",
    "to",
    "field",
)

#: One line per key, for help texts and error messages.
SETTING_DESCRIPTIONS: Mapping[str, Text | str] = {
    "mode": Text("how to send: 'relay' (through the e-POP relay) or 'direct'"),
    "relay": Text("the relay's address, {how}", how=RELAY_ADDRESS_HELP),
    "tls": Text("'yes' to encrypt the connection to the relay (TLS), 'no' not to"),
    "relay-ca": Text("PEM file of the authority that signs the relay's certificate (epop trust saves one)"),
    "epmsi": Text("e-PMSI's HTTPS origin, e.g. https://www.epmsi.atih.sante.fr"),
    "ca-file": Text("PEM file of CA certificates trusted for e-PMSI (direct mode)"),
    "proxy": Text("the proxy for direct mode: http://HOST:PORT, or 'system' to use this machine's"),
    "proxy-user": Text("user name for the proxy"),
    "proxy-password": Text("password for the proxy (stored in the file, never displayed)"),
    "to": Text("default path on e-PMSI to post uploads to, e.g. /syriusUpload.do"),
    "field": Text("default form field that carries the file"),
}

#: Where the proxy's account goes instead of its URL.
_CREDENTIALS = Text(
    "the user name and password have settings of their own; set them with proxy-user "
    "and proxy-password"
)

#: How the workstation's settings file words each mistake (L{epop.settings_file}).
_WORDING = Wording(
    unreadable=Text("cannot read settings file {path}: {reason}"),
    not_utf8=Text("{path}: not UTF-8 text (byte {byte}); save it as UTF-8"),
    before_section=Text("{where}: {text!r} comes before the [epop] header"),
    other_section=Text("{where}: unexpected {text!r}: the only section is [epop]"),
    section_twice=Text("{where}: [epop] appears twice"),
    not_key_value=Text("{where}: expected 'key = value', got {text!r}"),
    key_twice=Text("{where}: {key} is set twice (first on line {first})"),
    no_section=None,
)
_HIDDEN = "(set)"
_HEADER = (
    "# e-POP workstation settings, written by the epop command.\n"
    "# It may hold a password: keep it readable by you only.\n"
)


def settings_path(environ: Mapping[str, str] | None = None, platform: str | None = None) -> Path:
    """
    Where this user's settings live: C{EPOP_CONFIG} if set; else on Windows
    C{%APPDATA%\\epop\\client.ini}; else C{$XDG_CONFIG_HOME/epop/client.ini}
    or C{~/.config/epop/client.ini}.

    @param environ: C{os.environ} by default.
    @param platform: C{sys.platform} by default.
    """
    env = os.environ if environ is None else environ
    platform = sys.platform if platform is None else platform
    explicit = env.get("EPOP_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    if platform == "win32":
        appdata = env.get("APPDATA")
        if appdata:
            base = Path(appdata)
        else:
            base = _home(env, "USERPROFILE") / "AppData" / "Roaming"
        return base / "epop" / "client.ini"
    xdg = env.get("XDG_CONFIG_HOME")
    # The XDG spec says relative paths there are invalid and must be ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else _home(env, "HOME") / ".config"
    return base / "epop" / "client.ini"


def _home(environ: Mapping[str, str], name: str) -> Path:
    value = environ.get(name)
    return Path(value) if value else Path.home()


class ClientSettings:
    """
    The settings of one file: read with L{load}, changed with L{set} and
    L{unset}, written back with L{save}.
    """

    def __init__(self, path: Path, values: Mapping[str, str] | None = None) -> None:
        self.path = Path(path)
        self._values: dict[str, str] = {}
        for key, value in (values or {}).items():
            self.set(key, value)

    @classmethod
    def load(cls, path: Path) -> ClientSettings:
        """
        Read C{path}; a missing file is empty settings.

        @raise SettingsError: the file cannot be read, is malformed, or holds
            an unknown key or a bad value; the message names the file and line.
        """
        path = Path(path)

        def check(key: str, value: str) -> str:
            key = _known(key)
            if "\n" in value:
                raise ValueError(
                    Text("{key} takes one line: an indented line continues the value above it, "
                         "so start each setting at the beginning of its line", key=key)
                )
            return _check(key, value, on_set=False)

        found = read_section(path, _WORDING, check, missing_ok=True)
        settings = cls(path)
        settings._values = {setting.key: setting.value for setting in found or ()}
        return settings

    def get(self, key: str) -> str | None:
        """The value of C{key}, or C{None} if it is not set."""
        return self._values.get(_known(key))

    def relay_address(self) -> RelayAddress | None:
        """
        The saved relay, or C{None} if there is none.

        @raise SettingsError: the saved value is not a relay's address,
            naming the file and how to correct it.
        """
        text = self.get("relay")
        if text is None:
            return None
        try:
            return RelayAddress.parse(text)
        except ValueError as e:
            raise SettingsError(
                Text(
                    "{path}: relay = {value}: {why}; correct it with epop config set relay HOST[:PORT]",
                    path=str(self.path),
                    value=text,
                    why=reason_of(e),
                )
            ) from None

    def set(self, key: str, value: str) -> None:
        """
        Check and store C{value}; it is normalized (e.g. C{ca-file} made
        absolute, C{epmsi} without a trailing slash).

        @raise SettingsError: unknown key, or a value that would not work.
        """
        key = _known(key)
        try:
            self._values[key] = _check(key, value, on_set=True)
        except ValueError as e:
            raise SettingsError(reason_of(e)) from None

    def unset(self, key: str) -> None:
        """Forget C{key}, so its default applies again; unset keys are fine."""
        self._values.pop(_known(key), None)

    def save(self) -> None:
        """
        Write the file atomically (a half-written file would lose every
        setting), creating its folders readable by their owner only; the file
        itself is always mode 0600 on POSIX, as it may hold a password.
        """
        folder = self.path.parent
        _make_private_folders(folder)
        lines = [_HEADER, f"[{SECTION}]\n"]
        lines += [f"{key} = {self._values[key]}\n" for key in SETTING_KEYS if key in self._values]
        try:
            self._write(folder, lines)
        except OSError as e:
            raise SettingsError(
                Text("cannot write settings file {path}: {why}", path=str(self.path), why=system_reason(e))
            ) from None

    def write_beside(self, name: str, data: bytes, mode: int = 0o644) -> Path:
        """
        Write a file that goes with the settings (the relay's authority that
        C{epop trust} saves) in their folder, creating it as L{save} does;
        its path, absolute, as a setting names it.
        """
        folder = self.path.parent
        _make_private_folders(folder)
        path = (folder / name).absolute()
        try:
            write_atomically(str(path), data, mode)
        except OSError as e:
            raise SettingsError(Text("cannot write {path}: {why}", path=str(path), why=system_reason(e))) from None
        return path

    def _write(self, folder: Path, lines: list[str]) -> None:
        write_atomically(str(self.path), "".join(lines).encode("utf-8"), 0o600)

    def items_for_display(self) -> list[tuple[str, str]]:
        """Every set key in L{SETTING_KEYS} order; the password shows as C{(set)}."""
        return [
            (key, _HIDDEN if key == "proxy-password" else self._values[key])
            for key in SETTING_KEYS
            if key in self._values
        ]

    def __repr__(self) -> str:
        shown = ", ".join(f"{key}={value!r}" for key, value in self.items_for_display())
        return f"<ClientSettings {self.path} {shown}>"


def _make_private_folders(folder: Path) -> None:
    """Create the missing folders of C{folder} with mode 0700; leave existing ones."""
    missing: list[Path] = []
    current = folder
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            continue
        except OSError as e:
            raise SettingsError(Text("cannot create folder {path}: {why}", path=str(path), why=system_reason(e))) from None
        if os.name == "posix":
            os.chmod(path, 0o700)  # mkdir's mode is narrowed by the umask, not widened


def _known(key: str) -> str:
    """C{key} if it is a setting's name, else a L{SettingsError} listing them."""
    if key not in SETTING_KEYS:
        raise SettingsError(
            Text("unknown setting {key}: expected one of {keys}", key=repr(key), keys=", ".join(SETTING_KEYS))
        )
    return key


def _check(key: str, value: str, *, on_set: bool) -> str:
    """
    The value to store for C{key}, or a L{ValueError} saying what is wrong
    and what is expected.

    @param on_set: also check what may change later (the CA file exists).
    """
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(Text("{key} must be on one line, without control characters", key=key))
    stripped = value.strip()
    if not stripped:
        raise ValueError(Text("{key} is empty: give a value ({description})", key=key, description=SETTING_DESCRIPTIONS[key]))
    if stripped != value and key == "proxy-password" and on_set:
        raise ValueError(Text("proxy-password cannot start or end with a space in the settings file"))
    return _CHECKS[key](stripped, on_set)


def _check_mode(value: str, on_set: bool) -> str:
    mode = value.lower()
    if mode not in ("relay", "direct"):
        raise ValueError(Text("mode must be 'relay' or 'direct' (got {value})", value=repr(value)))
    return mode


def _check_relay(value: str, on_set: bool) -> str:
    if not on_set:
        # One saved before (by hand, by an older epop) is reported when it is
        # used (L{ClientSettings.relay_address}): epop config set must still
        # be able to replace it.
        return value
    RelayAddress.parse_setting("relay", value)  # its ValueError already says what is expected
    return value


def _check_epmsi(value: str, on_set: bool) -> str:
    return EpmsiOrigin.from_url(value).url


def _check_ca_file(value: str, on_set: bool) -> str:
    if not on_set:  # a moved file is reported when an upload needs it
        return value
    path = os.path.abspath(os.path.expanduser(value))
    if not os.path.isfile(path):
        raise ValueError(
            Text("ca-file {value}: no such file (expected a PEM file of CA certificates)", value=repr(value))
        )
    return path


_YES = ("yes", "oui", "true", "on", "1")
_NO = ("no", "non", "false", "off", "0")


def _check_tls(value: str, on_set: bool) -> str:
    answer = value.lower()
    if answer in _YES:
        return "yes"
    if answer in _NO:
        return "no"
    raise ValueError(Text("tls must be 'yes' or 'no' (got {value})", value=repr(value)))


def _check_relay_ca(value: str, on_set: bool) -> str:
    """
    An absolute path to a readable PEM certificate, checked when set so
    that a wrong file is refused now, not at the next upload.
    """
    if not on_set:  # a moved file is reported when a connection needs it
        return value
    path = os.path.abspath(os.path.expanduser(value))
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ValueError(
            Text("relay-ca: cannot read {path}: {why}", path=path, why=system_reason(e))
        ) from None
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(
            Text(
                "relay-ca: {path} is not a PEM certificate (expected a file that begins "
                "with -----BEGIN CERTIFICATE-----, such as the one epop trust saves)",
                path=path,
            )
        ) from None
    try:
        check_authority_file(path)
    except ValueError as e:
        raise ValueError(Text("relay-ca: {why}", why=reason_of(e))) from None
    return path


def _check_proxy(value: str, on_set: bool) -> str:
    if is_system(value):
        return SYSTEM
    return parse_proxy_url(value, credentials=_CREDENTIALS).url


def _check_text(value: str, on_set: bool) -> str:
    return value


def _check_to(value: str, on_set: bool) -> str:
    if not value.startswith("/") or any(c.isspace() for c in value):
        raise ValueError(
            Text("to must be a path starting with '/', without spaces, e.g. /syriusUpload.do "
                 "(got {value})", value=repr(value))
        )
    return value


_CHECKS: Mapping[str, Callable[[str, bool], str]] = {
    "mode": _check_mode,
    "relay": _check_relay,
    "tls": _check_tls,
    "relay-ca": _check_relay_ca,
    "epmsi": _check_epmsi,
    "ca-file": _check_ca_file,
    "proxy": _check_proxy,
    "proxy-user": _check_text,
    "proxy-password": _check_text,
    "to": _check_to,
    "field": _check_text,
}
