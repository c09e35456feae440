"""
C{epop trust}: trust a relay's certificate authority on first use, as SSH
does with a server's key.

The relay started with C{--tls-cert auto} makes its own authority and
presents it after its certificate.  C{epop trust} reads that chain once,
without verifying it (there is nothing to verify it against yet), shows the
authority's fingerprint for a person to compare with the one in the relay's
log, and saves the authority beside the settings, with C{tls = yes} and
C{relay-ca} naming it.  From then on C{epop send} and C{epop test} verify
the relay against it, and a relay that presents another authority is a hard
error (L{epop.local_tls.ClientTLS.untrusted}), never a plain connection.
"""

from __future__ import annotations

from typing import Any, TextIO

from cryptography import x509
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import implementer

from epop.certificates import (
    fingerprint,
    is_self_signed,
    issued_by,
    normalize_fingerprint,
    read_certificates,
    to_pem,
)
from epop.command import EXIT_FAILED, EXIT_OK, Command, CommandOptions, exit_status_for_signal, positive_seconds
from epop.errors import EpopError, RelayTLSFailure, describe_connect_failure, describe_relay_tls_failure
from epop.messages import Text, reason_of
from epop.workstation.client import RelayAddress
from epop.workstation.deadlines import DEFAULT_TIMEOUT

__all__ = ["TRUSTED_FILE", "TrustOptions", "presented_chain", "trust"]

#: The file, beside the settings, that holds the trusted authority.
TRUSTED_FILE = "relay-ca.pem"

#: What a person types to trust, in either language.
_YES = ("yes", "oui")


class TrustOptions(CommandOptions):
    synopsis = "[RELAY] [--fingerprint SHA256]"
    longdesc = (
        "Trust the certificate authority of a relay started with --tls-cert auto, "
        "on first use, as SSH does: connect to RELAY (default: the saved relay), "
        "show the authority's SHA-256 fingerprint, ask to confirm it (yes/oui) "
        "and save it beside the settings, with tls = yes and relay-ca naming it. "
        "Compare the fingerprint with the one in the relay's log at start. For "
        "scripted roll-outs, --fingerprint gives it instead of asking; without a "
        "terminal, --fingerprint is needed."
    )
    optParameters = [
        ["fingerprint", None, None,
         "The authority's fingerprint, as the relay logs it (SHA256 AB:CD:...) or "
         "openssl x509 -noout -fingerprint -sha256 prints it (prefix, colons and case "
         "do not matter): trust it without asking if it matches."],
        ["timeout", None, DEFAULT_TIMEOUT, "Seconds to wait for the relay."],
    ]

    def parseArgs(self, relay: str | None = None) -> None:
        self["relay"] = relay

    def postOptions(self) -> None:
        self["timeout"] = positive_seconds("timeout", self["timeout"])
        if self["fingerprint"] is not None:
            try:
                self["fingerprint"] = normalize_fingerprint(self["fingerprint"])
            except ValueError as e:
                raise usage.UsageError(Text("{name}: {problem}", name="--fingerprint", problem=reason_of(e))) from None


@implementer(IHandshakeListener)
class _ChainReader(Protocol):
    """Reads the chain the relay presents once the handshake is done, then leaves."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.chain: Deferred[list[x509.Certificate]] = Deferred(self._cancel)

    def _cancel(self, d: Deferred[Any]) -> None:
        if self.transport is not None:
            self.transport.abortConnection()

    def handshakeCompleted(self) -> None:
        presented = self.transport.getHandle().get_peer_cert_chain(as_cryptography=True) or []
        self.transport.loseConnection()
        if not self.chain.called:
            self.chain.callback(list(presented))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.chain.called:
            return
        error = describe_relay_tls_failure(reason, self.where)
        if isinstance(error, RelayTLSFailure) and error.kind == "no-tls":
            error = EpopError(
                "relay-tls",
                Text(
                    "The relay at {where} does not speak TLS, so there is nothing to trust yet: its "
                    "administrator turns encryption on with twistd epop --tls-cert auto "
                    "(docs/encryption.md); then run epop trust again.",
                    where=self.where,
                ),
                "tls",
            )
        elif error is None:
            error = describe_connect_failure(reason, self.where)
        self.chain.errback(Failure(error))


def presented_chain(
    reactor: Any, relay: RelayAddress, *, timeout: float = DEFAULT_TIMEOUT
) -> Deferred[list[x509.Certificate]]:
    """
    The certificates C{relay} presents in a TLS handshake, its own first,
    read without verifying them: they are what is about to be trusted.
    Failures are L{EpopError}s that say what to check.
    """
    where = str(relay)
    # No verification, on purpose: this is the first use.
    unverified = CertificateOptions(raiseMinimumTo=TLSVersion.TLSv1_2)
    endpoint = wrapClientTLS(unverified, HostnameEndpoint(reactor, relay.host, relay.port, timeout=timeout))
    reader = _ChainReader(where)

    def connected(protocol: _ChainReader) -> Deferred[list[x509.Certificate]]:
        return protocol.chain.addTimeout(timeout, reactor)

    def failed(failure: Failure) -> Failure:
        if failure.check(EpopError):
            return failure
        return Failure(describe_connect_failure(failure, where, timeout=timeout))

    return connectProtocol(endpoint, reader).addCallback(connected).addErrback(failed)


def _is_terminal(stdin: TextIO | None) -> bool:
    return stdin is not None and stdin.isatty()


def _authority(chain: list[x509.Certificate], where: str) -> x509.Certificate:
    """
    The certificate to trust: the top of the chain, when it is its own
    authority and the chain leads up to it.

    @raise EpopError: the top is not self-signed (a hospital's PKI, whose
        CA file is the one to use) or the chain is broken.
    """
    if not chain:
        raise EpopError(
            "relay-tls", Text("The relay at {where} presented no certificate.", where=where), "tls"
        )
    top = chain[-1]
    if not is_self_signed(top):
        raise EpopError(
            "relay-tls",
            Text(
                "The relay at {where} presents a certificate signed by {issuer}, an authority it "
                "does not send: that is a hospital's own PKI, not an authority the relay made "
                "itself. Nothing was saved. Get the hospital's CA file, then: epop config set "
                "relay-ca FILE and epop config set tls yes.",
                where=where,
                issuer=top.issuer.rfc4514_string(),
            ),
            "tls",
        )
    for cert, signer in zip(chain, chain[1:]):
        if not issued_by(cert, signer):
            raise EpopError(
                "relay-tls",
                Text(
                    "The certificates the relay at {where} presents do not lead up to "
                    "{authority}: nothing was saved. Ask the relay's administrator to check "
                    "its certificate chain.",
                    where=where,
                    authority=top.subject.rfc4514_string(),
                ),
                "tls",
            )
    return top


def _fingerprints_in(path: str | None) -> list[str]:
    """
    The fingerprints of the authorities saved in C{path} (the saved
    relay-ca); none when there is none, or it cannot be read any more.
    """
    if not path:
        return []
    try:
        return [fingerprint(c) for c in read_certificates(path, Text("relay CA file"))]
    except ValueError:
        return []


def _parsed(text: str) -> RelayAddress | None:
    """The relay C{text} names, or C{None} for one saved wrong (L{ClientSettings.relay_address})."""
    try:
        return RelayAddress.parse(text)
    except ValueError:
        return None


def _confirmed(command: Command, options: TrustOptions, found: str, where: str) -> bool:
    """Whether the person, or --fingerprint, says to trust C{found}; say why not."""
    expected = options["fingerprint"]
    if expected is not None:
        if expected == found:
            return True
        command.complain(
            Text(
                "The relay at {where} presents the authority {presented}, not the {expected} "
                "given with --fingerprint: nothing was saved. Check the fingerprint with the "
                "relay's administrator (it is in the relay's log at start).",
                where=where,
                presented=found,
                expected=expected,
            )
        )
        return False
    if not _is_terminal(command.stdin):
        command.complain(
            Text(
                "Nothing was saved: standard input is not a terminal, so no one can confirm. "
                "From a script, give --fingerprint with the fingerprint from the relay's log."
            )
        )
        return False
    assert command.stdin is not None
    command.stderr.write(
        command.render(
            Text(
                "Check it with the relay's administrator (it is in the relay's log at start). "
                "Trust this authority? (yes/no) "
            )
        )
    )
    command.stderr.flush()
    answer = command.stdin.readline().strip().lower()
    if answer and answer not in _YES and any(word.startswith(answer) for word in _YES):
        # "y" or "o": most likely a yes, but trusting is worth the whole word.
        command.stderr.write(command.render(Text("Type yes (or oui) to trust it, anything else to refuse: ")))
        command.stderr.flush()
        answer = command.stdin.readline().strip().lower()
    if answer in _YES:
        return True
    command.complain(Text("Not trusted: nothing was saved."))
    return False


def trust(command: Command, options: TrustOptions) -> Deferred[int]:
    """C{epop trust}: read the relay's authority, have it confirmed, save it."""
    saved = command.saved
    text = options["relay"] or saved.get("relay")
    if not text:
        raise usage.UsageError(
            Text("say which relay: epop trust HOST[:PORT] (or save it once: epop config set relay HOST)")
        )
    if options["relay"]:
        try:
            relay = RelayAddress.parse_setting("epop trust", text)
        except ValueError as e:
            raise usage.UsageError(reason_of(e)) from None
    else:
        relay = saved.relay_address()
        assert relay is not None  # text, the saved relay, is not empty
    where = str(relay)
    d = presented_chain(command.reactor, relay, timeout=options["timeout"])
    command.interruption.watch(d)

    def read(chain: list[x509.Certificate]) -> int:
        authority = _authority(chain, where)
        found = fingerprint(authority)
        command.tell(
            Text(
                "The relay at {where} presents a certificate from the authority {subject}, "
                "whose fingerprint is:",
                where=where,
                subject=authority.subject.rfc4514_string(),
            )
        )
        command.tell(f"  {found}")
        before = saved.get("relay-ca")
        trusted = _fingerprints_in(before)
        kept = saved.get("relay")
        if found in trusted and options["fingerprint"] in (None, found):
            command.tell(Text("Already trusted: {fingerprint}.", fingerprint=found))
            path = before
        else:
            if trusted:
                # As SSH does when a host's key changed: before anything is asked.
                command.tell(
                    Text(
                        "WARNING: this is not the authority trusted before ({fingerprint}, saved "
                        "in {path}); if the relay was not reinstalled, do not accept.",
                        fingerprint=", ".join(trusted),
                        path=before,
                    )
                )
            if not _confirmed(command, options, found, where):
                return EXIT_FAILED
            path = str(saved.write_beside(TRUSTED_FILE, to_pem(authority)))
            saved.set("relay-ca", path)
            command.tell(
                Text(
                    "Trusted the authority of the relay at {where}: {fingerprint}, saved in {path}.",
                    where=where,
                    fingerprint=found,
                    path=path,
                )
            )
        if path == before and saved.get("tls") == "yes" and kept is not None:
            done = None  # nothing to change
        elif kept is None:
            done = Text(
                "Settings saved in {path}: relay = {relay}, tls = yes, relay-ca = {ca}. epop send "
                "and epop test now encrypt the connection to the relay and check its certificate.",
                path=str(saved.path),
                relay=text,
                ca=path,
            )
        else:
            done = Text(
                "Settings saved in {path}: tls = yes, relay-ca = {ca}. epop send and epop test "
                "now encrypt the connection to the relay and check its certificate.",
                path=str(saved.path),
                ca=path,
            )
        if done is not None:
            saved.set("tls", "yes")
            if kept is None:
                saved.set("relay", text)
            saved.save()
            command.tell(done)
        if kept is not None and _parsed(kept) != relay:
            command.tell(
                Text(
                    "The saved relay is still {saved}: to send to {relay}, epop config set relay {relay}.",
                    saved=kept,
                    relay=text,
                )
            )
        return EXIT_OK

    def interrupted(failure: Failure) -> int | Failure:
        signal = command.interruption.signal
        if signal is None or not failure.check(CancelledError):
            return failure
        command.complain(Text("Interrupted ({signal}): nothing was saved.", signal=command.interruption.describe()))
        return exit_status_for_signal(signal)

    return d.addCallbacks(read, interrupted)
