"""
The relay's console: a live web page served by the relay itself, on its own
port (C{--console}, loopback by default), in place of the original
product's window.  It shows the settings and lets the administrator change
them, starts and stops listening, tests e-PMSI, and follows the connections
and the journal as they happen.

Only the person who started the relay gets in: the start-up log holds a
one-time URL (or, with C{--console-password-file}, a password opens it).
The web layer (L{access}, L{events}, L{resource}, L{service}) asks the relay
for everything through L{backend.IConsoleBackend}.
"""
