"""
PEM files: the certificates, keys and trust roots that both hops read.

The relay's certificate for the local hop, a workstation's pin of its
relay, and a hospital's CA for e-PMSI behind a TLS-inspecting proxy are all
PEM files an administrator names in a setting; each is read here, so a
missing or wrong file is refused the same way, naming the file and what it
was meant to hold.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import crypto
from twisted.internet.ssl import Certificate, trustRootFromCertificates

__all__ = ["fingerprint", "read_file", "read_certificates", "trust_root_from_pem"]

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)


def read_file(path: str, what: str) -> bytes:
    """
    The bytes of C{path}; C{what} names it in the error ("private key").

    @raise ValueError: the file cannot be read, saying why.
    """
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"cannot read the {what} {path}: {e.strerror}") from None


def _pem_certificates(data: bytes) -> list[bytes]:
    return _PEM_CERTIFICATE.findall(data)


def read_certificates(path: str, what: str) -> list[Certificate]:
    """
    Every certificate in the PEM file C{path}, in order.

    @raise ValueError: the file cannot be read or holds no certificate.
    """
    found = _pem_certificates(read_file(path, what))
    if not found:
        raise ValueError(f"the {what} {path} holds no PEM certificate")
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
        raise ValueError(f"cannot read CA file {path}: {e.strerror}") from None
    found = _pem_certificates(data)
    if not found:
        raise ValueError(f"CA file {path} holds no PEM certificate")
    try:
        return trustRootFromCertificates([Certificate.loadPEM(pem) for pem in found])
    except Exception as e:
        raise ValueError(f"CA file {path} holds an invalid certificate: {e}") from None


def fingerprint(cert: x509.Certificate | crypto.X509 | Certificate | bytes) -> str:
    """
    C{SHA256 AB:CD:...}: SHA-256 over the certificate's DER, in upper-case
    colon-separated hex, as C{openssl x509 -fingerprint -sha256} prints it,
    so that the relay's log, C{epop trust} and OpenSSL show the same words
    and a person can compare them by eye.

    @param cert: a C{cryptography} or pyOpenSSL certificate, Twisted's
        L{Certificate}, or DER bytes.
    """
    if isinstance(cert, x509.Certificate):
        der = cert.public_bytes(Encoding.DER)
    elif isinstance(cert, Certificate):
        der = cert.dump(crypto.FILETYPE_ASN1)
    elif isinstance(cert, crypto.X509):
        der = crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)
    else:
        der = bytes(cert)
    digest = hashlib.sha256(der).hexdigest().upper()
    return "SHA256 " + ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))
