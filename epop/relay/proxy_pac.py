"""
The relay's proxy auto-configuration file (PAC), served at C{/proxy.pac}
and C{/wpad.dat} on the relay's own port, for browsers.

A browser given the PAC's URL asks its C{FindProxyForURL(url, host)} for
every URL: the PAC sends exactly the relay's destinations' C{https} URLs
to the relay (C{PROXY address:port}) and everything else C{DIRECT}, so
that a browser set up this way reaches e-PMSI through the relay and every
other site as it did before.

The address is the one the workstation reached (the connection's local
address; behind a load balancer, the PROXY header's destination): a relay
listening on several interfaces hands each network the address it can use.

The script matches the host (lower-cased, a trailing dot aside) and the
port, exactly, with a lookup in a table.  It never calls C{dnsResolve},
C{isInNet} or C{myIpAddress}: on a workstation without DNS they stall each
page for the resolver's timeout.  Every value written into the script is a
JSON string, so nothing in a host name can end the string.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from typing import Any

from epop.addressing import host_port, ip_of
from epop.relay.destinations import Destination

__all__ = ["CONTENT_TYPE", "PAC_PATHS", "pac_script", "proxy_address", "reached_address"]

#: What browsers expect a PAC to be served as.
CONTENT_TYPE = "application/x-ns-proxy-autoconfig"
#: Where the relay serves it: the usual name, and WPAD's.
PAC_PATHS = ("/proxy.pac", "/wpad.dat")

_SCRIPT = """\
// e-POP relay: e-PMSI's https URLs go through this relay, every other URL goes DIRECT.
// No DNS lookups here: they would stall browsers on workstations without DNS.
var EPOP_RELAY = {relay};
var EPOP_DESTINATIONS = {destinations};

function FindProxyForURL(url, host) {{
    var colon = url.indexOf(":");
    if (colon < 0 || url.substring(0, colon).toLowerCase() !== "https") {{
        return "DIRECT";
    }}
    var authority = url.substring(colon + 3);
    var end = authority.search(/[\\/?#]/);
    if (end >= 0) {{
        authority = authority.substring(0, end);
    }}
    authority = authority.substring(authority.lastIndexOf("@") + 1);
    var port = "443";
    var portAt = authority.lastIndexOf(":");
    if (portAt > authority.lastIndexOf("]")) {{
        port = authority.substring(portAt + 1);
    }}
    var name = String(host).toLowerCase();
    if (name.charAt(0) === "[" && name.charAt(name.length - 1) === "]") {{
        name = name.substring(1, name.length - 1);
    }}
    if (name.charAt(name.length - 1) === ".") {{
        name = name.substring(0, name.length - 1);
    }}
    var key = name + " " + port;
    if (Object.prototype.hasOwnProperty.call(EPOP_DESTINATIONS, key)) {{
        return EPOP_RELAY;
    }}
    return "DIRECT";
}}
"""


def _js_string(text: str) -> str:
    """A JavaScript string literal for C{text}: JSON, with nothing left that HTML or JS could misread."""
    return json.dumps(text, ensure_ascii=True).replace("<", "\\u003c").replace(">", "\\u003e")


def _key(destination: Destination) -> str:
    return f"{destination.host} {destination.port}"


def pac_script(destinations: Iterable[Destination], relay_host: str, relay_port: int) -> str:
    """
    The PAC text: C{destinations}' https URLs to the relay at
    C{relay_host:relay_port}, everything else C{DIRECT}.
    """
    keys = sorted({_key(d) for d in destinations})
    table = "{" + ", ".join(f"{_js_string(key)}: true" for key in keys) + "}"
    relay = _js_string(f"PROXY {proxy_address(relay_host, relay_port)}")
    return _SCRIPT.format(relay=relay, destinations=table)


def proxy_address(host: str, port: int) -> str:
    """C{host:port} as a PAC (and a person) writes it: IPv6 in brackets, IPv4-mapped as IPv4."""
    ip = ip_of(host)
    if isinstance(ip, ipaddress.IPv4Address):
        host = str(ip)
    return host_port(host, port)


def reached_address(local: Any, host_header: str = "") -> tuple[str, int] | None:
    """
    The address and port a client reached: the connection's local address
    (C{transport.getHost()}); for a listener without one (a UNIX socket
    behind a forwarder), the request's C{Host} header; C{None} if neither.
    """
    host, port = getattr(local, "host", None), getattr(local, "port", None)
    if isinstance(host, str) and isinstance(port, int) and ip_of(host) is not None:
        return host, port
    name, _, number = host_header.strip().rpartition(":")
    if name and number.isdigit() and 0 < int(number) < 65536 and "]" not in number:
        name = name[1:-1] if name.startswith("[") and name.endswith("]") else name
        if name and all(c.isalnum() or c in ".-:" for c in name):
            return name, int(number)
    return None
