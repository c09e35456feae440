"""
The relay: what runs on the machine that reaches e-PMSI, facing the
workstations.

Its pieces, in the order a connection meets them: the listening service and
its settings (L{epop.relay.service}, L{epop.relay.settings}, and
L{epop.relay.tap} for C{twistd epop}), the optional PROXY header of a load
balancer (L{epop.relay.proxy_header}), the choice between TLS and plain
(L{epop.relay.session}), the allowlist then the caps
(L{epop.relay.allowlist}, L{epop.relay.limits}), which reach the protocol
only through L{epop.relay.interfaces.IRelaySession}, and the e-POP protocol
itself (L{epop.relay.protocol}, its table of states in
L{epop.relay.states}, a request's rules in L{epop.relay.request_rules}, its
errors in L{epop.relay.failures}, its time limits in L{epop.relay.pacing}),
with its operations (L{epop.relay.operations}, the upload's held tail in
L{epop.relay.upload_body}).  A browser's plain C{GET} of the relay's port
gets its page or its PAC file (L{epop.relay.info_page},
L{epop.relay.proxy_pac}).  L{epop.relay.network_interfaces} and
L{epop.relay.commands} are C{epop interfaces}, which lists the addresses the
relay can listen on.  The HTTPS proxy mode (HTTP CONNECT on the same port)
is L{epop.relay.http_proxy}, with L{epop.relay.http_head},
L{epop.relay.http_answers} (its refusals), L{epop.relay.destinations},
L{epop.relay.tunnel}, L{epop.relay.client_hello} (no domain fronting) and,
for C{--tunnel-users}, L{epop.relay.tunnel_users}.  The leg to e-PMSI is
L{epop.epmsi}; the journal the relay writes is L{epop.journal}.
"""
