"""
The workstation's side: the e-POP client (L{send_file}, L{test_connection})
and the settings the C{epop} command saves on a workstation.

It needs nothing from L{epop.relay}: a workstation speaks to the relay only
through the wire format of L{epop.wire}.
"""
