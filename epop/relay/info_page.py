"""
What the relay's port answers to a browser's plain C{GET}: a short page
at C{/} saying what this port is and how to use it, and the PAC file
(L{epop.relay.proxy_pac}) at C{/proxy.pac} and C{/wpad.dat}.

An administrator who types the relay's address into a browser learns what
answers there, which destinations it serves, and the two settings to give
applications (proxy address and port) and browsers (the PAC's URL), built
from the very address the browser reached.  The page is in the browser's
language (C{Accept-Language}, French or English), every value in it
HTML-escaped; it loads nothing and runs nothing.

These answers need no proxy credentials: browsers fetch a PAC without
them, and the page says nothing a client outside the allowlist may read
(the allowlist is checked before, as for a tunnel).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

from epop.messages import Text
from epop.relay.destinations import Destination
from epop.relay.proxy_pac import CONTENT_TYPE, PAC_PATHS, pac_script, proxy_address

__all__ = ["Page", "info_page", "page_for"]


@dataclass(frozen=True)
class Page:
    """One answer: its journal reason, its content type and its body."""

    reason: str
    content_type: str
    body: bytes


def page_for(
    path: str,
    destinations: Sequence[Destination],
    reached: tuple[str, int],
    language: str,
) -> Page | None:
    """
    The page at C{path} (an origin-form target, its query ignored) for a
    client that reached the relay at C{reached}; C{None} if there is none.
    """
    path = path.split("?", 1)[0].split("#", 1)[0]
    host, port = reached
    if path in PAC_PATHS:
        text = pac_script(destinations, host, port)
        return Page("served-pac", CONTENT_TYPE, text.encode("ascii"))
    if path == "/":
        return Page("served-page", "text/html; charset=utf-8", info_page(destinations, host, port, language))
    return None


def info_page(destinations: Sequence[Destination], host: str, port: int, language: str) -> bytes:
    """The page at C{/}, in C{language}."""
    address = proxy_address(host, port)
    relay_host = address.rsplit(":", 1)[0]
    pac_url = f"http://{address}{PAC_PATHS[0]}"

    def say(text: Text) -> str:
        return html.escape(text.render(language), quote=True)

    title = say(Text("e-POP relay for e-PMSI"))
    what = say(
        Text(
            "This port is an e-POP relay: workstations without Internet access send "
            "their PMSI files to e-PMSI through it (epop send --relay {address}).",
            address=address,
        )
    )
    proxy = say(
        Text(
            "It is also an HTTPS proxy for e-PMSI, and for nothing else. It opens "
            "tunnels to these destinations only:"
        )
    )
    application = say(
        Text(
            "In the application's connection settings, choose to use a proxy, and "
            "give the address {host} and the port {port}.",
            host=relay_host,
            port=port,
        )
    )
    browser = say(
        Text(
            "Set its automatic proxy configuration URL to {url}: e-PMSI then goes "
            "through this relay, and every other site as before.",
            url=pac_url,
        )
    )
    application_title = say(Text("An application"))
    browser_title = say(Text("A web browser"))
    listed = "".join(f"<li><code>{html.escape(str(d))}</code></li>\n" for d in destinations)
    link = html.escape(pac_url, quote=True)
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="{language}"><head><meta charset="utf-8"><title>{title}</title></head>\n'
        f"<body>\n<h1>{title}</h1>\n<p>{what}</p>\n<p>{proxy}</p>\n<ul>\n{listed}</ul>\n"
        f"<h2>{application_title}</h2>\n<p>{application}</p>\n"
        f"<h2>{browser_title}</h2>\n<p>{browser}</p>\n"
        f'<p><a href="{link}">{link}</a></p>\n'
        "</body></html>\n"
    ).encode("utf-8")
