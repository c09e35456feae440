"""
Encryption of the local hop, between the workstation and the relay.

As in the original product the workstation chooses: the relay takes
encrypted and plain sessions on the same port (L{epop.relay.session} tells
them apart).  This module holds what both ends configure.  A
relay started with C{--require-tls} refuses plain sessions with a clear
message; one started with C{--tls-client-ca} also wants a client certificate
signed by that authority.

The workstation's side checks the relay's certificate against the address
it was given (L{service_identity}, through L{optionsForClientTLS}): a
certificate that does not verify is an error, never a fall back to plain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from OpenSSL import crypto
from twisted.internet.ssl import (
    CertificateOptions,
    KeyPair,
    PrivateCertificate,
    TLSVersion,
    optionsForClientTLS,
)
from twisted.python.failure import Failure

from epop.certificates import read_certificates, read_file, trust_root_from_pem
from epop.messages import Text

__all__ = ["RelayTLS", "ClientTLS", "openssl_words", "server_options"]


def _private_certificate(cert_path: str, key_path: str) -> PrivateCertificate:
    certificate = read_certificates(cert_path, Text("certificate"))[0]
    try:
        key = KeyPair.load(read_file(key_path, Text("private key")), crypto.FILETYPE_PEM)
    except crypto.Error:
        raise ValueError(Text("the private key {path} is not a PEM private key", path=key_path)) from None
    try:
        return PrivateCertificate.fromCertificateAndKeyPair(certificate, key)
    except Exception as e:
        raise ValueError(Text("cannot use {cert} with {key}: {why}", cert=cert_path, key=key_path, why=str(e))) from None


@dataclass(frozen=True)
class RelayTLS:
    """The relay's side: its certificate, and what it asks of clients."""

    cert: str
    key: str
    chain: str | None = None
    client_ca: str | None = None
    require: bool = False

    def options(self) -> CertificateOptions:
        """
        Server TLS settings, checked now so that a bad file is a start-up
        error that names it.
        """
        return server_options(self.cert, self.key, self.chain, self.client_ca)


def server_options(
    cert: str, key: str, chain: str | None = None, client_ca: str | None = None
) -> CertificateOptions:
    private = _private_certificate(cert, key)
    extra = [c.original for c in read_certificates(chain, Text("certificate chain"))] if chain else []
    verify: dict[str, Any] = {}
    if client_ca:
        verify = {
            "verify": True,
            "requireCertificate": True,
            "caCerts": [c.original for c in read_certificates(client_ca, Text("client CA file"))],
        }
    return CertificateOptions(
        privateKey=private.privateKey.original,
        certificate=private.original,
        extraCertChain=extra,
        raiseMinimumTo=TLSVersion.TLSv1_2,
        **verify,
    )


@dataclass(frozen=True)
class ClientTLS:
    """
    The workstation's side: which authority signs the relay's certificate,
    and the workstation's own certificate when the relay asks for one.
    """

    relay_ca: str | None = None
    client_cert: str | None = None
    client_key: str | None = None

    def creator(self, host: str) -> Any:
        """Client TLS settings for a relay reached as C{host}."""
        root = trust_root_from_pem(self.relay_ca) if self.relay_ca else None
        mine = None
        if self.client_cert or self.client_key:
            if not (self.client_cert and self.client_key):
                raise ValueError("a client certificate needs both its certificate and its key")
            mine = _private_certificate(self.client_cert, self.client_key)
        return optionsForClientTLS(host, trustRoot=root, clientCertificate=mine)


def openssl_words(failure: Failure) -> str:
    """What OpenSSL said, e.g. "tlsv1 alert unknown ca", for the journal."""
    error = failure.value
    words = []
    for entry in error.args[0] if error.args and isinstance(error.args[0], list) else ():
        if isinstance(entry, tuple) and entry:
            words.append(str(entry[-1]))
    return "; ".join(w for w in words if w) or str(error) or type(error).__name__
