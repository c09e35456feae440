"""
PEM files: the certificates, keys and trust roots that both hops read.

The relay's certificate for the local hop, a workstation's pin of its
relay, and a hospital's CA for e-PMSI behind a TLS-inspecting proxy are all
PEM files an administrator names in a setting; each is read here, so a
missing or wrong file is refused the same way, naming the file and what it
was meant to hold.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.ssl import Certificate, trustRootFromCertificates

from epop.messages import Text, system_reason

__all__ = ["read_file", "read_certificates", "trust_root_from_pem"]

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)


def read_file(path: str, what: str | Text) -> bytes:
    """
    The bytes of C{path}; C{what} names it in the error ("private key").

    @raise ValueError: the file cannot be read, saying why.
    """
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(Text("cannot read the {what} {path}: {why}", what=what, path=path, why=system_reason(e))) from None


def _pem_certificates(data: bytes) -> list[bytes]:
    return _PEM_CERTIFICATE.findall(data)


def read_certificates(path: str, what: str | Text) -> list[Certificate]:
    """
    Every certificate in the PEM file C{path}, in order.

    @raise ValueError: the file cannot be read or holds no certificate.
    """
    found = _pem_certificates(read_file(path, what))
    if not found:
        raise ValueError(Text("the {what} {path} holds no PEM certificate", what=what, path=path))
    return [Certificate.loadPEM(pem) for pem in found]


def trust_root_from_pem(path: str) -> Any:
    """
    Trust every certificate in a PEM bundle, so a hospital can pin its own
    TLS-inspecting proxy's CA or a test can pin the sandbox's.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(Text("cannot read CA file {path}: {why}", path=path, why=system_reason(e))) from None
    found = _pem_certificates(data)
    if not found:
        raise ValueError(Text("CA file {path} holds no PEM certificate", path=path))
    try:
        return trustRootFromCertificates([Certificate.loadPEM(pem) for pem in found])
    except Exception as e:
        raise ValueError(Text("CA file {path} holds an invalid certificate: {why}", path=path, why=str(e))) from None
