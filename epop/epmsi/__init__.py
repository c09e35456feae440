"""
The leg to e-PMSI: the HTTPS client, the corporate proxy and its tunnel, and
the discovery of the system's proxy settings.

Both the relay and a workstation sending directly (C{epop send --direct})
use it, which is why it is its own package rather than part of
L{epop.relay}.  Its modules import each other in one direction only:
L{origin} (the URL and its trust roots) <- L{system_proxy} <- L{proxy}
(the settings, with L{proxy_setting}, what a proxy setting may be)
<- L{tunnel} (CONNECT) <- L{upstream} (the HTTP client).
"""
