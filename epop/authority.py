"""
A private certificate authority: making one, and issuing server
certificates from it.

Two parts of epop keep one: the sandbox, standing in for e-PMSI
(L{epop.sandbox.ca}), and the relay started with C{--tls-cert auto}
(L{epop.relay.own_authority}).  Both use EC P-256 keys, an authority that
may sign server certificates only (path length 0), and server certificates
that start an hour in the past, for clients whose clock is behind.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

__all__ = [
    "AUTHORITY_LIFETIME",
    "BACKDATE",
    "SERVER_LIFETIME",
    "issue_server_certificate",
    "make_authority",
    "pem_private_key",
    "subject_alternative_names",
]

#: Certificates start this long before they are made.
BACKDATE = datetime.timedelta(hours=1)
#: An authority's lifetime: long, since workstations keep trusting it.
AUTHORITY_LIFETIME = datetime.timedelta(days=3650)
#: The longest lifetime some TLS clients accept for a server certificate.
SERVER_LIFETIME = datetime.timedelta(days=825)


def pem_private_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    """C{key} as unencrypted PKCS#8 PEM: the file's mode is what protects it."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not signs_certificates,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def make_authority(
    subject: x509.Name, now: datetime.datetime, lifetime: datetime.timedelta
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new self-signed authority named C{subject}, valid C{lifetime} from C{now}."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    start = now - BACKDATE
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def issue_server_certificate(
    authority_key: ec.EllipticCurvePrivateKey,
    authority: x509.Certificate,
    subject: x509.Name,
    names: Sequence[x509.GeneralName],
    now: datetime.datetime,
    lifetime: datetime.timedelta,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """
    A new key, and a server certificate for C{names} signed by C{authority},
    valid C{lifetime} from C{now} but never beyond the authority.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    start = now - BACKDATE
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(authority.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(min(start + lifetime, authority.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority_key.public_key()),
            critical=False,
        )
        .sign(authority_key, hashes.SHA256())
    )
    return key, certificate


def subject_alternative_names(
    certificate: x509.Certificate,
) -> tuple[set[ipaddress.IPv4Address | ipaddress.IPv6Address], set[str]]:
    """The IP addresses and (lower-case) DNS names C{certificate} is for."""
    try:
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set(), set()
    ips = set(sans.get_values_for_type(x509.IPAddress))
    return ips, {name.lower() for name in sans.get_values_for_type(x509.DNSName)}
