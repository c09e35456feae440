"""
C{epop config} and C{epop proxy-settings}: the two commands that write the
workstation's saved settings (L{epop.workstation.settings}), which C{epop
send} and C{epop test} then read.
"""

from __future__ import annotations

import getpass
from typing import TextIO

from epop.command import EXIT_FAILED, EXIT_OK, Command, CommandOptions
from epop.epmsi.origin import DEFAULT_EPMSI_URL
from epop.messages import Text
from epop.workstation.settings import SETTING_DESCRIPTIONS, ClientSettings

__all__ = ["ConfigOptions", "ProxySettingsOptions", "config", "proxy_settings"]


class _ConfigSet(CommandOptions):
    synopsis = "KEY VALUE"
    longdesc = (
        "Save one setting. Keys: "
        + "; ".join(f"{key}: {text}" for key, text in SETTING_DESCRIPTIONS.items())
        + ". For proxy-password give '-' as VALUE: the password is then read from "
        "standard input, so that it never shows in the command line."
    )

    def parseArgs(self, key: str, value: str) -> None:
        self["key"], self["value"] = key, value


class _ConfigUnset(CommandOptions):
    synopsis = "KEY"

    def parseArgs(self, key: str) -> None:
        self["key"] = key


class ConfigOptions(CommandOptions):
    synopsis = "(show | path | set KEY VALUE | unset KEY)"
    longdesc = (
        "The workstation's saved settings, filled in once and used by 'epop send' "
        "and 'epop test' when no flag says otherwise. The file is "
        "~/.config/epop/client.ini (%APPDATA%\\epop\\client.ini on Windows), or "
        "wherever EPOP_CONFIG points; it is readable by its owner only."
    )
    subCommands = [
        ["show", None, CommandOptions, "Print the saved settings (never the password)."],
        ["path", None, CommandOptions, "Print where the settings file is."],
        ["set", None, _ConfigSet, "Save one setting."],
        ["unset", None, _ConfigUnset, "Remove one setting."],
    ]
    defaultSubCommand = "show"


class ProxySettingsOptions(CommandOptions):
    synopsis = "[--pac FILE] [--save]"
    longdesc = (
        "Find the proxy this machine would use to reach e-PMSI (the manual's "
        "'Importer les parametres de proxy'): environment variables, the "
        "Windows registry, macOS settings or a PAC file, NO_PROXY included. "
        "--save stores the result in the saved settings."
    )
    optFlags = [["save", None, "Store what was found in the saved settings."]]
    optParameters = [
        ["pac", None, None, "Evaluate this PAC file (path or file:// URL) instead of the system's settings."],
        ["epmsi", None, DEFAULT_EPMSI_URL, "The address to find a proxy for."],
    ]


def read_password(stdin: TextIO | None, language: str = "en") -> str:
    """
    The proxy password from standard input: asked for without echo on a
    terminal, else its first line (C{printf '%s\\n' "$PW" | epop config set
    proxy-password -}).  Nothing at all reads as an empty password.
    """
    if stdin is not None and stdin.isatty():
        return getpass.getpass(Text("Proxy password: ").render(language))
    line = stdin.readline() if stdin is not None else ""
    return line.rstrip("\r\n")


def _save(command: Command, saved: ClientSettings) -> int:
    saved.save()
    command.tell(Text("Saved in {path}.", path=str(saved.path)))
    return EXIT_OK


def config(command: Command, options: ConfigOptions) -> int:
    """C{epop config}: show, locate, set or unset the saved settings."""
    action, sub, saved = options.subCommand, options.subOptions, command.saved
    if action == "path":
        command.say(str(saved.path))
        return EXIT_OK
    if action == "show":
        items = saved.items_for_display()
        command.say(f"# {saved.path}")
        if not items:
            command.say(Text("# no settings saved yet: epop config set KEY VALUE"))
        for key, value in items:
            command.say(f"{key} = {value}")
        return EXIT_OK
    key = sub["key"]
    if action == "set":
        value = sub["value"]
        if key == "proxy-password" and value == "-":
            value = read_password(command.stdin, command.language)
        saved.set(key, value)
    else:
        if saved.get(key) is None:
            command.tell(Text("{key} was not set; nothing changed.", key=key))
            return EXIT_OK
        saved.unset(key)
    return _save(command, saved)


def proxy_settings(command: Command, options: ProxySettingsOptions) -> int:
    """C{epop proxy-settings}: say which proxy this machine uses, and save it with --save."""
    from epop.epmsi.system_proxy import discover_proxy

    saved = command.saved
    found = discover_proxy(options["epmsi"], environ=command.environ, pac=options["pac"])
    command.say(found.text())
    if not options["save"]:
        return EXIT_OK if not found.unresolved else EXIT_FAILED
    if found.unresolved:
        command.tell(Text("Nothing saved: the proxy could not be determined."))
        return EXIT_FAILED
    if found.proxy is None:
        saved.unset("proxy")
        saved.unset("proxy-user")
    else:
        saved.set("proxy", found.proxy)
        if found.user:
            saved.set("proxy-user", found.user)
    return _save(command, saved)
