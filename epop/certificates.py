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
from OpenSSL import SSL, crypto
# Twisted documents the interface, trustRoot's type, without exporting it.
from twisted.internet._sslverify import IOpenSSLTrustRoot
from twisted.internet.ssl import Certificate, trustRootFromCertificates
from zope.interface import implementer

from epop.messages import Text, system_reason

__all__ = [
    "certificate_names",
    "check_authority_file",
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

#: What may come before a fingerprint's digits: ours (C{SHA256 }), openssl's
#: (C{sha256 Fingerprint=}), or C{SHA-256}, in any case.
_FINGERPRINT_WORDS = re.compile(r"\s*sha-?256(?:\s*fingerprint)?\s*[=:]?", re.IGNORECASE)

#: A fingerprint by another algorithm (openssl's default was SHA-1): its name.
_OTHER_ALGORITHM = re.compile(r"\s*(sha-?(?!256)\d+|md5)", re.IGNORECASE)

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


def trust_root_from_pem(path: str, *, partial_chain: bool = False) -> Any:
    """
    Trust every certificate in a PEM bundle, so a hospital can pin its own
    TLS-inspecting proxy's CA or a test can pin the sandbox's.  With
    C{partial_chain}, each is trusted on its own, an intermediate included,
    without its root (OpenSSL's C{X509_V_FLAG_PARTIAL_CHAIN}).
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
        root = trustRootFromCertificates([Certificate.loadPEM(pem) for pem in found])
    except Exception as e:
        raise ValueError(Text("CA file {path} holds an invalid certificate: {why}", path=path, why=str(e))) from None
    return _PartialChain(root) if partial_chain else root


@implementer(IOpenSSLTrustRoot)
class _PartialChain:
    """Another trust root's certificates, each one a trust anchor on its own."""

    def __init__(self, root: Any) -> None:
        self._root = root

    def _addCACertsToContext(self, context: SSL.Context) -> None:
        self._root._addCACertsToContext(context)
        context.get_cert_store().set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)


def check_authority_file(path: str) -> None:
    """
    Refuse a server's own certificate where an authority is wanted (as
    relay-ca): the relay's certificate, copied by mistake, would fail every
    connection with "unknown authority".  A self-signed certificate is its
    own authority, whatever its basic constraints say.

    @raise ValueError: C{path} cannot be read, holds no certificate, or
        holds a certificate that is not an authority's.
    """
    for cert in read_certificates(path, Text("relay CA file")):
        found = _x509(cert)
        if is_self_signed(found):
            continue
        try:
            constraints = found.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            continue
        if not constraints.ca:
            raise ValueError(
                Text(
                    "{path} is a server's certificate, not an authority: give the authority "
                    "that signs it (for a relay on --tls-cert auto: epop trust)",
                    path=path,
                )
            )


#: The certificate types met here: cryptography's, pyOpenSSL's, Twisted's.
_AnyCertificate = x509.Certificate | crypto.X509 | Certificate


def _x509(cert: _AnyCertificate) -> x509.Certificate:
    """Any of the certificate types met here, as cryptography's."""
    if isinstance(cert, Certificate):
        cert = cert.original
    if isinstance(cert, crypto.X509):
        return cert.to_cryptography()
    return cert


def certificate_names(cert: _AnyCertificate) -> str:
    """The names and addresses C{cert} is for (its subjectAltName), as the relay logs them; empty without any."""
    try:
        names = _x509(cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ""
    return ", ".join(str(name.value) for name in names)


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
    case, or as C{openssl x509 -noout -fingerprint -sha256} prints it
    (C{sha256 Fingerprint=D2:7C:...}, C{SHA256 Fingerprint=} before
    OpenSSL 3), or C{SHA-256 D2:...}.

    @raise ValueError: not 64 hexadecimal digits once the prefix and the
        separators are set aside, or the prefix names another algorithm.
    """
    other = _OTHER_ALGORITHM.match(text)
    if other:
        raise ValueError(
            Text("{text} is a {algorithm} fingerprint: only SHA-256 fingerprints are accepted, as the "
                 "relay logs them (SHA256 AB:CD:...) or openssl x509 -noout -fingerprint -sha256 prints them",
                 text=repr(text), algorithm=other[1].upper().replace("-", ""))
        )
    prefix = _FINGERPRINT_WORDS.match(text)
    digits = text[prefix.end():] if prefix else text
    digits = re.sub(r"[\s:\-]", "", digits).upper()
    if not re.fullmatch(r"[0-9A-F]{64}", digits):
        raise ValueError(
            Text("{text} is not a SHA-256 fingerprint: expected 64 hexadecimal digits, "
                 "as the relay logs it (SHA256 AB:CD:...)", text=repr(text))
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
