"""
The e-PMSI sandbox: a real local HTTPS server that stands in for e-PMSI in
the tests, the demo and the benchmarks.

It implements only the documented upload service (a multipart POST to
C{/syriusUpload.do}), with its own certificate authority, and is never used
by the relay or the workstation in production.

Its parts: the certificate authority (L{epop.sandbox.ca}), the upload
handling (L{epop.sandbox.uploads}), the web site (L{epop.sandbox.site}) and
the service that runs them over TLS (L{epop.sandbox.service}), and
C{epop sandbox} (L{epop.sandbox.commands}).
"""
