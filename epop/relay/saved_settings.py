"""
Saving the relay's settings file (C{twistd epop --config}) from the console:
L{epop.settings_update}'s careful rewrite, with the relay's own keys and
reader, so that a saved file is one the relay starts with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from epop.relay.settings import SettingKeys, read_settings_file
from epop.relay.tap import Options
from epop.settings_update import Change, update_settings_file

__all__ = ["relay_keys", "save_settings"]


def relay_keys() -> SettingKeys:
    """The keys the relay's settings file may hold: its twistd options."""
    return SettingKeys.of(Options())


def _check(key: str, value: Change, keys: SettingKeys) -> None:
    """A key the relay knows, with a value of its kind; ValueError names the key."""
    if key not in keys.names():
        raise ValueError(f"{key!r} is not a key of the relay's settings file")
    if value is None:
        return
    if key in keys.flags:
        if not isinstance(value, bool):
            raise ValueError(f"{key}: a flag takes True or False, not {value!r}")
    elif key in keys.repeatable:
        if isinstance(value, (str, bool)) or not isinstance(value, Sequence):
            raise ValueError(f"{key}: takes a list of values, not {value!r}")
    elif not isinstance(value, str):
        raise ValueError(f"{key}: takes one text value, not {value!r}")


def save_settings(
    path: str,
    changes: Mapping[str, Change],
    *,
    header: str | None = None,
    keys: SettingKeys | None = None,
) -> None:
    """
    L{update_settings_file} for the relay: every key must be one of the
    relay's, with a value of its kind (a flag C{bool}, C{listen}, C{allow}
    and C{tunnel-to} a list, others a text), and the file must read, before
    and after, as C{twistd epop --config} reads it.

    @raise ValueError: a key or value that cannot be saved, naming the key.
    @raise SettingsError: the file does not read (left unchanged), or would
        not with these changes (put back as it was).
    """
    keys = keys or relay_keys()
    for key, value in changes.items():
        _check(key, value, keys)
    update_settings_file(
        path, changes, header=header, read=lambda name: read_settings_file(name, keys)
    )
