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

from OpenSSL import SSL, crypto
from twisted.internet.error import VerifyError
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import (
    CertificateOptions,
    KeyPair,
    PrivateCertificate,
    TLSVersion,
    optionsForClientTLS,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from epop.certificates import (
    certificate_names,
    fingerprint,
    issued_by,
    read_certificates,
    read_file,
    trust_root_from_pem,
)
from epop.errors import EpopError, RelayTLSFailure, relay_without_tls
from epop.messages import Text

__all__ = [
    "RelayTLS",
    "ClientTLS",
    "WatchedCreator",
    "openssl_words",
    "server_options",
    "tls_version",
]


def _private_certificate(cert_path: str, key_path: str) -> PrivateCertificate:
    certificate = read_certificates(cert_path, Text("certificate"))[0]
    try:
        key = KeyPair.load(read_file(key_path, Text("private key")), crypto.FILETYPE_PEM)
    except crypto.Error:
        raise ValueError(Text("the private key {path} is not a PEM private key", path=key_path)) from None
    try:
        return PrivateCertificate.fromCertificateAndKeyPair(certificate, key)
    except VerifyError:
        raise ValueError(
            Text("the private key {key} is not the key of the certificate {certificate}: "
                 "give the key that was made with this certificate", certificate=cert_path, key=key_path)
        ) from None
    except Exception as e:
        raise ValueError(
            Text("cannot use {certificate} with {key}: {why}", certificate=cert_path, key=key_path, why=str(e))
        ) from None


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

    def described(self) -> Text:
        """
        The certificate as the relay logs it at start: what an administrator
        checks (whose it is, until when) and what a workstation is shown
        when it first connects (its fingerprint).
        """
        certificate = read_certificates(self.cert, Text("certificate"))[0]
        cert = certificate.original.to_cryptography()
        names = certificate_names(cert)
        return Text(
            "Encryption available (TLS): certificate {path}, subject {subject}, for {names}, valid until {date}, "
            "fingerprint {fingerprint}",
            path=self.cert,
            subject=cert.subject.rfc4514_string() or Text("none"),
            names=names or Text("no name (no subjectAltName)"),
            date=cert.not_valid_after_utc.strftime("%Y-%m-%d"),
            fingerprint=fingerprint(certificate),
        )


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
    #: The saved settings file whose C{tls = yes} asked for TLS, when no
    #: C{--tls} did: an error then says where to turn it off.
    saved_in: str | None = None

    def creator(self, host: str) -> WatchedCreator:
        """
        Client TLS settings for a relay reached as C{host}, for one
        connection: it keeps that connection, so that a certificate that
        does not verify can be described (L{explain}).

        Any certificate of the relay's chain may be C{relay_ca}: the
        authority that signs its certificate is often a hospital's
        intermediate, trusted on its own (OpenSSL's partial chain), the
        host name still checked.
        """
        root = trust_root_from_pem(self.relay_ca, partial_chain=True) if self.relay_ca else None
        mine = None
        if self.client_cert or self.client_key:
            if not (self.client_cert and self.client_key):
                raise ValueError(Text("a client certificate needs both its certificate and its key"))
            mine = _private_certificate(self.client_cert, self.client_key)
        return WatchedCreator(optionsForClientTLS(host, trustRoot=root, clientCertificate=mine))

    def explain(self, creator: WatchedCreator, failure: Failure, where: str) -> EpopError | None:
        """
        What these settings add to a failed handshake with the relay at
        C{where}: the saved setting that asked for TLS of a relay without
        it; C{epop trust} when the relay's authority is unknown and no
        relay-ca is set; the hard error of L{untrusted}.  C{None} when the
        failure says it all already.
        """
        found = failure.value
        if isinstance(found, RelayTLSFailure):
            if found.kind == "no-tls" and self.saved_in is not None:
                return RelayTLSFailure(where, found.kind, relay_without_tls(where, self.saved_in))
            presented = creator.presented_chain()
            if found.kind == "unverified" and not self.relay_ca and presented and not presented[0].has_expired():
                return RelayTLSFailure(
                    where,
                    found.kind,
                    Text(
                        "{error} No relay-ca is set, so only this machine's authorities are "
                        "trusted: run epop trust {relay} to trust this relay's own authority, "
                        "or set relay-ca to the hospital's authority.",
                        error=found.text,
                        relay=where,
                    ),
                )
        return self.untrusted(creator, failure, where)

    def untrusted(self, creator: WatchedCreator, failure: Failure, where: str) -> EpopError | None:
        """
        When the relay's certificate does not come from C{relay_ca} (saved
        by C{epop trust}, or given): a relay reinstalled, or someone in
        between.  The hard error names both fingerprints and says what to
        check; C{None} for any other failure (an expired certificate from
        the right authority, another name...), described as before.
        """
        if not self.relay_ca or not _tls_failed(failure):
            return None
        presented = creator.presented_chain()
        try:
            authorities = read_certificates(self.relay_ca, Text("relay CA file"))
        except ValueError:
            return None  # an unreadable file is described as before
        if not presented or any(issued_by(c, a) for c in presented for a in authorities):
            return None  # the authority is the one trusted: expired, another name...
        trusted = ", ".join(fingerprint(c) for c in authorities)
        return EpopError(
            "relay-tls",
            Text(
                "The relay at {where} presented a certificate that this workstation does not "
                "trust: trusted authority {trusted} (in {file}), presented {presented}. The relay "
                "may have been reinstalled or someone may be in between: check the fingerprint "
                "with the relay's administrator (it is in the relay's log at start), then run "
                "epop trust again (with a hospital's own CA file, check that relay-ca names the "
                "right one).",
                where=where,
                file=self.relay_ca,
                trusted=trusted,
                presented=fingerprint(presented[-1]),
            ),
            "tls",
        )


@implementer(IOpenSSLClientConnectionCreator)
class WatchedCreator:
    """
    Another creator's TLS connection, kept for afterwards: the chain the
    relay presented is still there when its verification failed.
    """

    def __init__(self, creator: Any) -> None:
        self._creator = creator
        self.connection: SSL.Connection | None = None

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        self.connection = self._creator.clientConnectionForTLS(tlsProtocol)
        return self.connection

    def presented_chain(self) -> list[crypto.X509]:
        """The certificates the relay sent, its own first; empty if none came."""
        if self.connection is None:
            return []
        return list(self.connection.get_peer_cert_chain() or [])


def _tls_failed(failure: Failure) -> bool:
    """Whether the connection failed in its TLS handshake."""
    value = failure.value
    return isinstance(value, SSL.Error) or (isinstance(value, EpopError) and value.cause == "tls")


def tls_version(transport: Any) -> str | None:
    """
    The TLS version of an established connection (C{"TLSv1.3"}), or
    C{None} when C{transport} is not encrypted.
    """
    handle = getattr(transport, "getHandle", lambda: None)()
    if isinstance(handle, SSL.Connection):
        return handle.get_protocol_version_name()
    return None


def openssl_words(failure: Failure) -> str:
    """What OpenSSL said, e.g. "tlsv1 alert unknown ca", for the journal."""
    error = failure.value
    words = []
    for entry in error.args[0] if error.args and isinstance(error.args[0], list) else ():
        if isinstance(entry, tuple) and entry:
            words.append(str(entry[-1]))
    return "; ".join(w for w in words if w) or str(error) or type(error).__name__
