"""
The sandbox's own certificate authority: a private CA and a server
certificate it signs for the names the sandbox is reached by, kept in a
folder so that a CA already handed to clients (C{--ca-file}) keeps working
across restarts.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
import OpenSSL
from OpenSSL.crypto import X509, PKey
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.python.filepath import FilePath

from epop.authority import (
    AUTHORITY_LIFETIME,
    SERVER_LIFETIME,
    issue_server_certificate,
    make_authority,
    pem_private_key,
    subject_alternative_names,
)
from epop.files import write_atomically

__all__ = [
    "DEFAULT_HOSTNAMES",
    "Host",
    "SandboxCertificates",
    "ensure_certificates",
    "parse_host",
    "server_tls_options",
]

#: Names a locally started sandbox is reached by.
DEFAULT_HOSTNAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")

_CA_NAME = "ca.pem"
_CA_KEY_NAME = "ca-key.pem"
_CERT_NAME = "server.pem"
_KEY_NAME = "server-key.pem"

# Regenerate a little before expiry so a long demo does not cross it.
_EXPIRY_MARGIN = datetime.timedelta(days=7)

Host = Union[str, ipaddress.IPv4Address, ipaddress.IPv6Address]


@dataclass(frozen=True)
class SandboxCertificates:
    """
    Where the sandbox's TLS material lives.

    Clients (e.g. the relay's C{--ca-file}) only need C{ca_path}; the server
    uses C{cert_path} and C{key_path}.
    """

    ca_path: FilePath
    cert_path: FilePath
    key_path: FilePath


def parse_host(name: str) -> Host:
    """Normalise a hostname to an IP address or a lower-case A-label."""
    bare = name.strip()
    if bare.startswith("[") and bare.endswith("]"):
        bare = bare[1:-1]
    if not bare:
        raise ValueError("empty hostname")
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        return bare.encode("idna").decode("ascii").lower()


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _public_bytes(key: Any) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER,
        serialization.PublicFormat.SubjectPublicKeyInfo,
    )


def _issue_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Create a fresh self-signed CA only able to sign leaf certificates."""
    now = _utcnow()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "epop sandbox"),
            x509.NameAttribute(
                NameOID.COMMON_NAME,
                f"epop e-PMSI sandbox CA {now:%Y-%m-%d %H:%M:%S}",
            ),
        ]
    )
    return make_authority(name, now, AUTHORITY_LIFETIME)


def _issue_server(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_certificate: x509.Certificate,
    hosts: Sequence[Host],
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Create a server key and a certificate for C{hosts} signed by the CA."""
    names: list[x509.GeneralName] = []
    for host in hosts:
        if isinstance(host, str):
            names.append(x509.DNSName(host))
        else:
            names.append(x509.IPAddress(host))
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "epop sandbox"),
            x509.NameAttribute(NameOID.COMMON_NAME, str(hosts[0])[:64]),
        ]
    )
    return issue_server_certificate(ca_key, ca_certificate, subject, names, _utcnow(), SERVER_LIFETIME)


def _load_pair(
    cert_path: FilePath, key_path: FilePath
) -> tuple[Any, x509.Certificate] | None:
    """
    Load a certificate and its key, or L{None} if either is missing,
    unreadable, expired (or nearly), or if they do not belong together.
    """
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.getContent())
        key = serialization.load_pem_private_key(key_path.getContent(), None)
    except (OSError, ValueError, TypeError):
        return None
    now = _utcnow()
    if not (
        certificate.not_valid_before_utc
        <= now
        < certificate.not_valid_after_utc - _EXPIRY_MARGIN
    ):
        return None
    if _public_bytes(key.public_key()) != _public_bytes(certificate.public_key()):
        return None
    return key, certificate


def _covers(certificate: x509.Certificate, hosts: Sequence[Host]) -> bool:
    """Tell whether the certificate's SANs name every one of C{hosts}."""
    ips, dns = subject_alternative_names(certificate)
    return all((host in dns) if isinstance(host, str) else (host in ips) for host in hosts)


def ensure_certificates(
    directory: FilePath, hostnames: Sequence[str] = DEFAULT_HOSTNAMES
) -> SandboxCertificates:
    """
    Make sure C{directory} holds a private CA and a server certificate it
    signed for C{hostnames}, creating them if needed.

    Existing files are reused so that a CA already handed to clients (via
    C{--ca-file}) keeps working across restarts.  The server certificate is
    re-issued, under the same CA, when it is missing, expired, does not match
    its key or CA, or does not cover every requested hostname; the CA itself
    is only regenerated when it is missing or unusable.  Private keys are
    written with mode 0600.
    """
    hosts: list[Host] = []
    for name in hostnames:
        host = parse_host(name)
        if host not in hosts:
            hosts.append(host)
    if not hosts:
        raise ValueError("at least one hostname is required")

    if not directory.isdir():
        directory.makedirs(ignoreExistingDirectory=True)
        os.chmod(directory.path, 0o700)
    ca_path = directory.child(_CA_NAME)
    ca_key_path = directory.child(_CA_KEY_NAME)
    cert_path = directory.child(_CERT_NAME)
    key_path = directory.child(_KEY_NAME)
    result = SandboxCertificates(ca_path=ca_path, cert_path=cert_path, key_path=key_path)

    ca = _load_pair(ca_path, ca_key_path)
    if ca is None:
        ca_key, ca_certificate = _issue_ca()
        write_atomically(ca_key_path.path, pem_private_key(ca_key), 0o600)
        write_atomically(
            ca_path.path, ca_certificate.public_bytes(serialization.Encoding.PEM), 0o644
        )
    else:
        ca_key, ca_certificate = ca
        server = _load_pair(cert_path, key_path)
        if server is not None:
            certificate = server[1]
            try:
                certificate.verify_directly_issued_by(ca_certificate)
            except (ValueError, TypeError, InvalidSignature):
                pass
            else:
                if _covers(certificate, hosts):
                    return result

    key, certificate = _issue_server(ca_key, ca_certificate, hosts)
    write_atomically(key_path.path, pem_private_key(key), 0o600)
    write_atomically(cert_path.path, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    return result


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


_PYOPENSSL_TAKES_CRYPTOGRAPHY = _version_tuple(OpenSSL.__version__) >= (24, 3)


def server_tls_options(cert_pem: bytes, key_pem: bytes) -> CertificateOptions:
    """
    Build server-side TLS options from PEM data.

    C{cert_pem} holds the leaf certificate first, optionally followed by
    intermediates, which are then sent along in the handshake.
    """
    chain = x509.load_pem_x509_certificates(cert_pem)
    key = serialization.load_pem_private_key(key_pem, None)
    if _PYOPENSSL_TAKES_CRYPTOGRAPHY:
        # Twisted hands these straight to pyOpenSSL, which since 24.3
        # prefers cryptography objects and deprecates its own.
        return CertificateOptions(
            privateKey=key,  # type: ignore[arg-type]
            certificate=chain[0],  # type: ignore[arg-type]
            extraCertChain=chain[1:],
            raiseMinimumTo=TLSVersion.TLSv1_2,
        )
    return CertificateOptions(
        privateKey=PKey.from_cryptography_key(key),  # type: ignore[arg-type]
        certificate=X509.from_cryptography(chain[0]),
        extraCertChain=[X509.from_cryptography(extra) for extra in chain[1:]],
        raiseMinimumTo=TLSVersion.TLSv1_2,
    )
