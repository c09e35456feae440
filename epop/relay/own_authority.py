"""
C{--tls-cert auto}: the relay encrypts the local hop with a certificate
authority of its own, so that an administrator need not make a certificate
with the right addresses and copy a CA file to every workstation.

On the first start the relay makes the authority (a self-signed certificate,
10 years) and a certificate for itself signed by it (825 days, the most
that clients accept), covering every address and name it listens on.  Both
stay in a folder of the relay's (C{--tls-dir}); the private keys are created
at mode 0600 and a key that other users can read is refused, as SSH does.
Later starts reuse them; when the relay listens on an address its
certificate does not cover, or that certificate expires within 30 days, a
new one is issued by the I{same} authority, so workstations that trust the
authority (C{epop trust} pins it) need nothing new.

The relay sends its certificate with the authority's (L{RelayTLS.chain}), so
a workstation can see the authority on first use.  The authority's
fingerprint, in the form L{fingerprint} gives, is logged at every start:
that is what workstations confirm.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint, UNIXServerEndpoint, serverFromString
from twisted.logger import Logger

from epop.authority import (
    AUTHORITY_LIFETIME,
    SERVER_LIFETIME,
    issue_server_certificate,
    make_authority,
    pem_private_key,
    subject_alternative_names,
)
from epop.certificates import certificate_names, fingerprint, issued_by
from epop.files import write_atomically
from epop.local_tls import RelayTLS
from epop.messages import Text
from epop.relay.network_interfaces import LocalAddress, local_addresses
from epop.relay.proxy_header import HAPROXY_PREFIX

__all__ = [
    "AUTO",
    "OwnAuthorityError",
    "Coverage",
    "coverage_for",
    "own_authority_tls",
]

#: The C{--tls-cert} value that asks for the relay's own authority.
AUTO = "auto"
#: The folder's files: the authority's certificate is the one to hand out.
CA_CERT = "epop-relay-ca.pem"
CA_KEY = "epop-relay-ca-key.pem"
CERT = "epop-relay.pem"
KEY = "epop-relay-key.pem"

RENEW_BEFORE = datetime.timedelta(days=30)

_WILDCARDS = ("", "0.0.0.0", "::")

log = Logger()


class OwnAuthorityError(ValueError):
    """The relay cannot make or use its own authority: C{text} says why."""

    def __init__(self, text: Text) -> None:
        super().__init__(str(text))
        self.text = text


@dataclass(frozen=True)
class Coverage:
    """The addresses and DNS names a relay certificate must hold."""

    addresses: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]
    names: tuple[str, ...]

    def missing_from(self, cert: x509.Certificate) -> list[str]:
        """What C{cert}'s subject alternative names leave out, in words."""
        have_ips, have_names = subject_alternative_names(cert)
        return [str(a) for a in self.addresses if a not in have_ips] + [
            n for n in self.names if n.lower() not in have_names
        ]

    def general_names(self) -> list[x509.GeneralName]:
        found: list[x509.GeneralName] = [x509.DNSName(n) for n in self.names]
        found += [x509.IPAddress(a) for a in self.addresses]
        return found


def _listen_host(description: str) -> str | None:
    """
    The interface a C{--listen} string binds: C{""} for every address,
    C{None} for a Unix socket (nothing a certificate names).
    """
    inner = description[len(HAPROXY_PREFIX) :] if description.startswith(HAPROXY_PREFIX) else description
    try:
        endpoint = serverFromString(None, inner)
    except Exception:
        return ""  # the listen check refuses it with its own words; cover everything meanwhile
    if isinstance(endpoint, UNIXServerEndpoint):
        return None
    if isinstance(endpoint, (TCP4ServerEndpoint, TCP6ServerEndpoint)):
        interface: str = getattr(endpoint, "_interface", "")
        return interface
    return ""  # e.g. systemd: sockets: any address of the machine


def _dns_name(name: str) -> str | None:
    """C{name} if it can be a certificate's DNS name (ASCII, not an address)."""
    name = name.strip().rstrip(".").lower()
    if not name or not name.isascii() or " " in name:
        return None
    try:
        ipaddress.ip_address(name)
        return None
    except ValueError:
        return name


def coverage_for(
    listen: Iterable[str],
    *,
    addresses: Sequence[LocalAddress] | None = None,
    host_names: Sequence[str] | None = None,
) -> Coverage:
    """
    What a certificate must cover for a relay listening on C{listen}: for a
    wildcard, every address of this machine (as C{epop interfaces} lists
    them) and its host name and FQDN; for one interface, that one; and
    loopback (127.0.0.1, ::1, localhost) always, for the tests one runs on
    the relay itself.

    @param addresses: this machine's addresses; by default L{local_addresses}().
    @param host_names: by default the host name and FQDN.
    """
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    names = ["localhost"]

    def add_ip(text: str) -> None:
        ip = ipaddress.ip_address(text.partition("%")[0])
        if ip not in ips:
            ips.append(ip)

    def add_name(text: str) -> None:
        name = _dns_name(text)
        if name is not None and name not in names:
            names.append(name)

    for description in listen:
        host = _listen_host(description)
        if host is None:
            continue
        if host in _WILDCARDS:
            for local in local_addresses() if addresses is None else addresses:
                add_ip(local.host)
            if host_names is None:
                host_names = [socket.gethostname(), socket.getfqdn()]
            for name in host_names:
                add_name(name)
            continue
        try:
            add_ip(host)
        except ValueError:
            add_name(host)
    return Coverage(tuple(ips), tuple(names))


def _check_private(path: str) -> None:
    """Refuse a key other users can read or write, as SSH does."""
    if os.name != "posix":
        return
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise OwnAuthorityError(
            Text(
                "the private key {path} is open to other users (mode {mode}): "
                "only the relay's user may read it; run chmod 600 {path}",
                path=path,
                mode=f"{mode:04o}",
            )
        )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _host_label() -> str:
    return _dns_name(socket.gethostname()) or "relay"


@dataclass
class _Folder:
    """The relay's TLS folder and its four files."""

    path: str

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def prepare(self) -> None:
        """Create the folder at 0700 if needed; refuse one the relay cannot write in."""
        try:
            if not os.path.isdir(self.path):
                os.makedirs(self.path, mode=0o700)
                if os.name == "posix":
                    os.chmod(self.path, 0o700)
        except OSError as e:
            raise self._refusal(e, creating=True) from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise OwnAuthorityError(
                Text(
                    "cannot write in {folder}, the folder of the relay's certificates: "
                    "give it to the relay's user, or choose another with --tls-dir",
                    folder=self.path,
                )
            )

    def read_cert(self, name: str, *, keep: bool = False) -> x509.Certificate | None:
        """
        The certificate C{name}; C{None} when missing, or when damaged and
        not C{keep} (it is then made again).

        @raise OwnAuthorityError: C{keep} (the authority) and it cannot be
            read: the relay never replaces an authority by itself.
        """
        path = self.file(name)
        try:
            with open(path, "rb") as f:
                return x509.load_pem_x509_certificate(f.read())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            if not keep:
                return None
            why = e.strerror if isinstance(e, OSError) and e.strerror else Text("it is not a PEM certificate")
            raise OwnAuthorityError(
                Text(
                    "cannot read the relay's certificate authority {cert}: {why}; put it back, or "
                    "delete it and its key to make a new one (every workstation must then trust it again)",
                    cert=path,
                    why=why,
                )
            ) from None

    def read_key(self, name: str) -> ec.EllipticCurvePrivateKey | None:
        """The key C{name}, refused when others can read it; C{None} when missing or unusable."""
        path = self.file(name)
        if not os.path.exists(path):
            return None
        _check_private(path)
        try:
            with open(path, "rb") as f:
                key = serialization.load_pem_private_key(f.read(), password=None)
        except OSError as e:
            raise OwnAuthorityError(
                Text("cannot read the private key {path}: {why}", path=path, why=e.strerror or str(e))
            ) from None
        except (ValueError, TypeError):
            return None
        return key if isinstance(key, ec.EllipticCurvePrivateKey) else None

    def write(self, cert_name: str, cert: x509.Certificate, key_name: str, key: ec.EllipticCurvePrivateKey) -> None:
        """The key first: a certificate on disk always has its key beside it."""
        try:
            write_atomically(self.file(key_name), pem_private_key(key), 0o600)
            write_atomically(self.file(cert_name), _pem_cert(cert), 0o644)
        except OSError as e:
            raise self._refusal(e, creating=False) from None

    def _refusal(self, error: OSError, *, creating: bool) -> OwnAuthorityError:
        """The folder could not be created, or written in: why, naming it."""
        why = error.strerror or str(error)
        if creating:
            text = Text("cannot create {folder}, the folder of the relay's certificates: {why}", folder=self.path, why=why)
        else:
            text = Text("cannot write in {folder}, the folder of the relay's certificates: {why}", folder=self.path, why=why)
        return OwnAuthorityError(text)


def _same_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    return cert.public_key() == key.public_key()


def _make_authority(now: datetime.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "epop relay"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"epop relay authority {_host_label()}"),
        ]
    )
    return make_authority(name, now, AUTHORITY_LIFETIME)


def _issue(
    authority_key: ec.EllipticCurvePrivateKey,
    authority: x509.Certificate,
    coverage: Coverage,
    now: datetime.datetime,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"epop relay {_host_label()}")])
    return issue_server_certificate(authority_key, authority, subject, coverage.general_names(), now, SERVER_LIFETIME)


def _why_renew(
    cert: x509.Certificate | None,
    key: ec.EllipticCurvePrivateKey | None,
    authority: x509.Certificate,
    coverage: Coverage,
    now: datetime.datetime,
) -> Text | None:
    """Why the relay's certificate must be issued again; C{None} to keep it."""
    if cert is None or key is None or not _same_key(cert, key):
        return Text("there was none")
    if cert == authority or not issued_by(cert, authority):
        return Text("the one there was signed by another authority")
    missing = coverage.missing_from(cert)
    if missing:
        return Text("the one there did not cover {missing}", missing=", ".join(missing))
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        return Text("the one there expires on {date}", date=_day(cert.not_valid_after_utc))
    return None


def _day(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d")


def own_authority_tls(
    folder: str,
    coverage: Coverage,
    *,
    client_ca: str | None = None,
    require: bool = False,
    now: Callable[[], datetime.datetime] | None = None,
    language: str = "en",
) -> RelayTLS:
    """
    The relay's TLS settings from its own authority in C{folder}: made on
    the first call, reused later, the relay's certificate issued again when
    it does not cover C{coverage} or expires within L{RENEW_BEFORE}.  Runs
    before the reactor (at option time), so a problem is a start-up error.

    @param now: the current UTC time, for tests; by default the system's.
    @param language: the language of the lines logged for the administrator.
    @raise OwnAuthorityError: the folder cannot be used, a key is open to
        other users, or the authority is unusable; saying what to do.
    """
    moment = (now or (lambda: datetime.datetime.now(datetime.timezone.utc)))()
    place = _Folder(os.path.abspath(folder))
    place.prepare()
    authority = place.read_cert(CA_CERT, keep=True)
    authority_key = place.read_key(CA_KEY)
    if authority is None:
        authority_key, authority = _make_authority(moment)
        place.write(CA_CERT, authority, CA_KEY, authority_key)
        log.info(
            "{text}",
            text=Text("Made the relay's certificate authority {path}", path=place.file(CA_CERT)).render(language),
            path=place.file(CA_CERT),
        )
    elif authority_key is None or not _same_key(authority, authority_key):
        raise OwnAuthorityError(
            Text(
                "{cert} has no usable private key beside it ({key}): put the key back, or delete "
                "both to make a new authority (every workstation must then trust it again)",
                cert=place.file(CA_CERT),
                key=place.file(CA_KEY),
            )
        )
    elif authority.not_valid_after_utc - moment < RENEW_BEFORE:
        raise OwnAuthorityError(
            Text(
                "the relay's certificate authority {cert} expires on {date}: delete it and {key} "
                "to make a new one (every workstation must then trust it again)",
                cert=place.file(CA_CERT),
                key=place.file(CA_KEY),
                date=_day(authority.not_valid_after_utc),
            )
        )
    cert = place.read_cert(CERT)
    key = place.read_key(KEY)
    why = _why_renew(cert, key, authority, coverage, moment)
    if why is not None:
        key, cert = _issue(authority_key, authority, coverage, moment)
        place.write(CERT, cert, KEY, key)
        log.info(
            "{text}",
            text=Text(
                "Issued a new certificate for the relay from its authority ({why}); "
                "workstations that trust the authority need nothing new",
                why=why,
            ).render(language),
            path=place.file(CERT),
        )
    assert cert is not None
    names = certificate_names(cert)
    log.info(
        "{text}",
        text=Text(
            "Encryption of the local hop: the relay's certificate authority {authority} has the "
            "fingerprint {authority_fingerprint}; this is the one workstations confirm (epop trust). "
            "The relay's certificate {cert} ({cert_fingerprint}) is valid until {until} for {names}",
            authority=place.file(CA_CERT),
            authority_fingerprint=fingerprint(authority),
            cert=place.file(CERT),
            cert_fingerprint=fingerprint(cert),
            until=_day(cert.not_valid_after_utc),
            names=names,
        ).render(language),
        authority_fingerprint=fingerprint(authority),
        cert_fingerprint=fingerprint(cert),
    )
    return RelayTLS(place.file(CERT), place.file(KEY), place.file(CA_CERT), client_ca, require)
