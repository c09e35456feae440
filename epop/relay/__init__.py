"""
The relay: what runs on the machine that reaches e-PMSI, facing the
workstations.

Its pieces, in the order a connection meets them: the listening service and
its settings (L{epop.relay.service}, L{epop.relay.settings}, and
L{epop.relay.tap} for C{twistd epop}), the optional PROXY header of a load
balancer (L{epop.relay.proxy_header}), the caps and the allowlist
(L{epop.relay.limits}, L{epop.relay.allowlist}), the choice between TLS and
plain (L{epop.relay.session}), and the e-POP protocol itself with its time
limits (L{epop.relay.protocol}, its operations in L{epop.relay.operations},
L{epop.relay.pacing}).  The leg to e-PMSI is
L{epop.epmsi}; the journal the relay writes is L{epop.journal}.
"""
