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

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from OpenSSL import crypto
from twisted.internet.ssl import Certificate, trustRootFromCertificates

from epop.messages import Text, system_reason

__all__ = [
    "fingerprint",
    "is_self_signed",
    "issued_by",
    "normalize_fingerprint",
    "read_file",
    "read_certificates",
    "to_pem",
    "trust_root_from_pem",
]

#: How a fingerprint starts, as the relay logs it and the workstation shows it.
FINGERPRINT_PREFIX = "SHA256 "

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)


def read_file(path: str, what: Text | str) -> bytes:
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


def read_certificates(path: str, what: Text | str) -> list[Certificate]:
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


#: The certificate types met here: cryptography's, pyOpenSSL's, Twisted's.
_AnyCertificate = x509.Certificate | crypto.X509 | Certificate


def _x509(cert: _AnyCertificate) -> x509.Certificate:
    """Any of the certificate types met here, as cryptography's."""
    if isinstance(cert, Certificate):
        cert = cert.original
    if isinstance(cert, crypto.X509):
        return cert.to_cryptography()
    return cert


def fingerprint(cert: _AnyCertificate) -> str:
    """
    SHA-256 over the certificate's DER, as C{SHA256 AB:CD:...}: the form
    the relay logs at start and the workstation shows, so a person compares
    like with like (C{openssl x509 -fingerprint -sha256} prints the same
    hex digits).
    """
    digest = _x509(cert).fingerprint(hashes.SHA256())
    return FINGERPRINT_PREFIX + ":".join(f"{byte:02X}" for byte in digest)


def normalize_fingerprint(text: str) -> str:
    """
    A fingerprint as a person or a roll-out script types it, in the form of
    L{fingerprint}: with or without the C{SHA256} prefix and colons, in any
    case.

    @raise ValueError: not 64 hexadecimal digits once the prefix and the
        separators are set aside.
    """
    digits = text.strip()
    if digits[:6].upper() == "SHA256":
        digits = digits[6:].lstrip(" =:")
    digits = re.sub(r"[\s:\-]", "", digits).upper()
    if not re.fullmatch(r"[0-9A-F]{64}", digits):
        raise ValueError(
            Text("{text} is not a SHA-256 fingerprint: expected 64 hexadecimal digits, "
                 "e.g. SHA256 AB:CD:...:EF", text=repr(text))
        )
    return FINGERPRINT_PREFIX + ":".join(digits[i : i + 2] for i in range(0, 64, 2))


def issued_by(cert: _AnyCertificate, authority: _AnyCertificate) -> bool:
    """
    Whether C{authority} signed C{cert} (names and signature), or is
    C{cert} itself.
    """
    found, signer = _x509(cert), _x509(authority)
    if found == signer:
        return True
    if found.issuer != signer.subject:
        return False
    try:
        found.verify_directly_issued_by(signer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def is_self_signed(cert: _AnyCertificate) -> bool:
    """Whether C{cert} is its own issuer, signature included: an authority's root."""
    found = _x509(cert)
    if found.issuer != found.subject:
        return False
    try:
        found.verify_directly_issued_by(found)
    except (ValueError, TypeError, InvalidSignature):  # not signed by its own key
        return False
    return True


def to_pem(cert: _AnyCertificate) -> bytes:
    """C{cert} as a PEM block, for a file a person can read with openssl."""
    return _x509(cert).public_bytes(serialization.Encoding.PEM)
