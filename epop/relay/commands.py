"""
C{epop interfaces}: the relay's one command outside C{twistd epop}, to choose
where it listens (the manual's "Adresse IP" list).
"""

from __future__ import annotations

from twisted.python import usage

from epop.addressing import DEFAULT_PORT
from epop.command import EXIT_FAILED, EXIT_OK, Command, CommandOptions
from epop.messages import Text

__all__ = ["InterfacesOptions", "interfaces"]


class InterfacesOptions(CommandOptions):
    synopsis = "[--port PORT]"
    longdesc = (
        "List this machine's addresses the relay can listen on (the manual's "
        "'Adresse IP' list), with the --listen option to use for each and the "
        "address workstations then type."
    )
    optParameters = [["port", "p", DEFAULT_PORT, "The relay's port."]]

    def postOptions(self) -> None:
        # Port 0 would be any free port: not one workstations could be told.
        text = str(self["port"])
        if not text.isdigit() or not 1 <= int(text) <= 65535:
            raise usage.UsageError(
                Text("--port: expected the relay's port number, from 1 to 65535, not {value}", value=repr(text))
            )
        self["port"] = int(text)


def interfaces(command: Command, options: InterfacesOptions) -> int:
    """One line an address: the --listen to give the relay, what workstations type."""
    from epop.relay.network_interfaces import local_addresses

    found = local_addresses()
    if not found:
        command.say(Text("This machine has no network address."))
        return EXIT_FAILED
    for address in found:
        command.say(
            Text(
                "{address} ({interface}): --listen {listen}  (workstations type {client})",
                address=address.address,
                interface=address.interface,
                listen=address.listen_string(options["port"]),
                client=address.client_address(options["port"]),
            )
        )
    return EXIT_OK
