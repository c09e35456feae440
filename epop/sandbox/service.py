"""
A local HTTPS stand-in for e-PMSI, for tests, demos and benchmarks.

e-PMSI's only documented service is a C{multipart/form-data} POST to
C{/syriusUpload.do} (fields such as C{userId}, C{userPwd}, C{year},
C{period}, C{finess} and the file part C{theFile}).  The sandbox does not try
to imitate anything more of e-PMSI: it accepts an upload on I{any} path,
stores the files it contains and answers a JSON receipt, so that a test (or a
person running a demo) can check exactly what the relay forwarded.

Uploads can be several gigabytes, so request bodies are streamed to disk as
they arrive instead of being spooled by twisted.web, and nothing
half-written is ever visible: an upload only appears under its final name
once the whole body has arrived and parsed cleanly.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import ipaddress
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from multipart import (
    MultipartError,
    MultipartSegment,
    ParserLimitReached,
    PushMultipartParser,
    parse_content_disposition,
    parse_options_header,
)
import OpenSSL
from OpenSSL.crypto import X509, PKey
from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from epop.addressing import host_port
from epop.files import write_atomically

__all__ = [
    "DEFAULT_HOSTNAMES",
    "MAX_FIELD_SIZE",
    "MAX_PARTS",
    "SandboxCertificates",
    "SandboxRequest",
    "SandboxService",
    "SandboxSite",
    "ensure_certificates",
    "make_sandbox_site",
    "sanitize_filename",
    "server_tls_options",
]

#: Names a locally started sandbox is reached by.
DEFAULT_HOSTNAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")

#: Largest accepted value of a non-file form field: e-PMSI fields are short
#: identifiers, anything bigger is a client bug we want a test to notice.
MAX_FIELD_SIZE = 64 * 1024
#: Most parts accepted in one multipart body (e-PMSI uses about six).
MAX_PARTS = 1000
#: Largest accepted header line inside a multipart part.
MAX_PART_HEADER_SIZE = 8 * 1024
#: Most header lines accepted inside a multipart part.
MAX_PART_HEADERS = 16

#: Stored name of a file whose client gave no usable name.
DEFAULT_FILENAME = "upload.bin"

_UPLOAD_METHODS = (b"POST", b"PUT")
_ALLOWED_METHODS = (b"GET", b"HEAD", b"POST", b"PUT")
_PARTIAL_SUFFIX = ".partial"

# ---------------------------------------------------------------------------
# Certificates
# ---------------------------------------------------------------------------

_CA_NAME = "ca.pem"
_CA_KEY_NAME = "ca-key.pem"
_CERT_NAME = "server.pem"
_KEY_NAME = "server-key.pem"

_CA_LIFETIME = datetime.timedelta(days=3650)
# 825 days is the longest lifetime some TLS clients accept for a leaf.
_SERVER_LIFETIME = datetime.timedelta(days=825)
# Regenerate a little before expiry so a long demo does not cross it.
_EXPIRY_MARGIN = datetime.timedelta(days=7)

_Host = Union[str, ipaddress.IPv4Address, ipaddress.IPv6Address]


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


def _parse_host(name: str) -> _Host:
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


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _public_bytes(key: Any) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER,
        serialization.PublicFormat.SubjectPublicKeyInfo,
    )


def _issue_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Create a fresh self-signed CA only able to sign leaf certificates."""
    key = ec.generate_private_key(ec.SECP256R1())
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
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + _CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def _issue_server(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_certificate: x509.Certificate,
    hosts: Sequence[_Host],
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Create a server key and a certificate for C{hosts} signed by the CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _utcnow()
    names: list[x509.GeneralName] = []
    for host in hosts:
        if isinstance(host, str):
            names.append(x509.DNSName(host))
        else:
            names.append(x509.IPAddress(host))
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "epop sandbox"),
                    x509.NameAttribute(NameOID.COMMON_NAME, str(hosts[0])[:64]),
                ]
            )
        )
        .issuer_name(ca_certificate.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(
            min(now + _SERVER_LIFETIME, ca_certificate.not_valid_after_utc)
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_certificate.public_key()  # type: ignore[arg-type]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, certificate


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


def _covers(certificate: x509.Certificate, hosts: Sequence[_Host]) -> bool:
    """Tell whether the certificate's SANs name every one of C{hosts}."""
    try:
        sans = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value
    except x509.ExtensionNotFound:
        return False
    dns = {name.lower() for name in sans.get_values_for_type(x509.DNSName)}
    ips = set(sans.get_values_for_type(x509.IPAddress))
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
    hosts: list[_Host] = []
    for name in hostnames:
        host = _parse_host(name)
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
        write_atomically(ca_key_path.path, _pem_key(ca_key), 0o600)
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
    write_atomically(key_path.path, _pem_key(key), 0o600)
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


# ---------------------------------------------------------------------------
# Storing uploads
# ---------------------------------------------------------------------------

_FORBIDDEN_CHARACTERS = re.compile(r'[<>:"|?*\x00-\x1f\x7f]')
_WINDOWS_RESERVED = re.compile(r"^(con|prn|aux|nul|com\d|lpt\d)(\..*)?$", re.IGNORECASE)


#: Longest file name, in bytes, most file systems take.
MAX_NAME_BYTES = 255
#: Longest ending kept as an extension when a long name is shortened.
_MAX_EXTENSION_BYTES = 16


def _split_extension(name: str) -> tuple[str, str]:
    """C{name} as stem and extension, the extension only if it is short."""
    stem, extension = os.path.splitext(name)
    if len(extension.encode("utf-8")) > _MAX_EXTENSION_BYTES:
        return name, ""
    return stem, extension


def _fit_name(stem: str, ending: str) -> str:
    """
    C{stem + ending} in at most L{MAX_NAME_BYTES} UTF-8 bytes: the stem is
    shortened (never in the middle of a character) so that the extension, or
    a de-duplicating C{-2}, survives.
    """
    room = MAX_NAME_BYTES - len(ending.encode("utf-8"))
    return stem.encode("utf-8")[:room].decode("utf-8", "ignore") + ending


def sanitize_filename(name: str | None) -> str:
    """
    Turn a client-supplied file name into a safe name for one directory
    entry.

    Keeps the base name only (both C{/} and C{\\} separate components), drops
    control and Windows-reserved characters and leading dots, shortens it to
    L{MAX_NAME_BYTES} keeping its extension, and falls back to
    C{upload.bin}: a client must never be able to write outside its
    upload folder, create hidden files, or collide with our C{.partial}
    names.
    """
    if not name:
        return DEFAULT_FILENAME
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable() or ch == " ")
    base = _FORBIDDEN_CHARACTERS.sub("_", base)
    base = base.strip().lstrip(".").strip().rstrip(". ")
    if _WINDOWS_RESERVED.match(base):
        base = "_" + base
    base = _fit_name(*_split_extension(base))
    if not base or base.endswith(_PARTIAL_SUFFIX):
        return DEFAULT_FILENAME if not base else _fit_name(base, ".bin")
    return base


class _UploadRejected(Exception):
    """An upload the sandbox refuses, with the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _IncomingFile:
    """One file being written under a temporary name while it is hashed."""

    def __init__(
        self, partial: FilePath, field: str | None, filename: str | None, stored_name: str
    ) -> None:
        self.partial = partial
        self.field = field
        self.filename = filename
        self.stored_name = stored_name
        self.size = 0
        self._sha256 = hashlib.sha256()
        # "x": never reuse or truncate an existing file.
        self._handle: io.BufferedWriter | None = open(partial.path, "xb")

    def write(self, data: bytes) -> None:
        """Append one chunk; only this chunk is ever held in memory."""
        assert self._handle is not None, "write after close"
        self._handle.write(data)
        self._sha256.update(data)
        self.size += len(data)

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._handle is not None:
            handle, self._handle = self._handle, None
            handle.close()

    def receipt(self) -> dict[str, Any]:
        """The receipt entry for this file."""
        return {
            "field": self.field,
            "filename": self.filename,
            "size": self.size,
            "sha256": self._sha256.hexdigest(),
        }


class _PendingUpload:
    """
    The files of one request, invisible until L{commit}.

    Files go into a hidden C{.<id>.partial} folder as C{NNNN.partial}; on
    commit they get their final names and the folder is renamed to C{<id>}
    in one step, so a reader sees either a complete upload or nothing.
    """

    def __init__(self, site: SandboxSite) -> None:
        self._site = site
        self.upload_id: str | None = None
        self._folder: FilePath | None = None
        self._files: list[_IncomingFile] = []
        self._names: set[str] = set()
        self.finished = False

    @property
    def log(self) -> Logger:
        return self._site.logger

    def _ensure_folder(self) -> FilePath:
        if self._folder is None:
            self.upload_id, self._folder = self._site._allocate_upload()
        return self._folder

    def _unique_name(self, wanted: str) -> str:
        name = wanted
        counter = 1
        while name.casefold() in self._names:
            counter += 1
            stem, extension = _split_extension(wanted)
            name = _fit_name(stem, f"-{counter}{extension}")
        self._names.add(name.casefold())
        return name

    def new_file(self, field: str | None, filename: str | None) -> _IncomingFile:
        """Start a new file; C{filename} is the client's, unsanitised."""
        folder = self._ensure_folder()
        stored_name = self._unique_name(sanitize_filename(filename))
        partial = folder.child(f"{len(self._files):04d}{_PARTIAL_SUFFIX}")
        incoming = _IncomingFile(
            partial, field, stored_name if filename else None, stored_name
        )
        self._files.append(incoming)
        return incoming

    def commit(self) -> tuple[str, list[dict[str, Any]]]:
        """Give every file its final name and publish the folder."""
        folder = self._ensure_folder()
        assert self.upload_id is not None
        for incoming in self._files:
            incoming.close()
        for incoming in self._files:
            os.rename(incoming.partial.path, folder.child(incoming.stored_name).path)
        # os.rename refuses to replace a non-empty directory, and
        # _allocate_upload made sure the final name was free.
        os.rename(folder.path, self._site.upload_directory.child(self.upload_id).path)
        self.finished = True
        return self.upload_id, [incoming.receipt() for incoming in self._files]

    def discard(self) -> None:
        """Delete everything written so far (idempotent)."""
        self.finished = True
        for incoming in self._files:
            incoming.close()
        if self._folder is not None:
            folder, self._folder = self._folder, None
            try:
                folder.remove()
            except OSError:
                self._site.logger.failure(
                    "Could not delete partial upload {folder}", folder=folder.path
                )


@dataclass(frozen=True)
class _UploadResult:
    upload_id: str
    files: list[dict[str, Any]]
    fields: list[str]


class _Body:
    """
    Where a request body goes while it arrives.

    Once something goes wrong the partial files are deleted at once and the
    rest of the body is drained and ignored, so the error can still be
    answered when the request completes.
    """

    def __init__(self, upload: _PendingUpload) -> None:
        self._upload = upload
        self.rejection: _UploadRejected | None = None
        self.received = 0
        self.field_names: list[str] = []

    @property
    def done(self) -> bool:
        return self._upload.finished

    def feed(self, data: bytes) -> None:
        """Handle one chunk of body."""
        self.received += len(data)
        if self.rejection is not None or not data:
            return
        try:
            self._feed(data)
        except Exception:
            self._reject(Failure())

    def finish(self) -> _UploadResult:
        """
        End of body: check it was complete and publish the files.

        @raise _UploadRejected: if the body was unacceptable.
        """
        if self.rejection is None:
            try:
                self._finish()
                upload_id, files = self._upload.commit()
            except Exception:
                self._reject(Failure())
            else:
                return _UploadResult(upload_id, files, list(self.field_names))
        assert self.rejection is not None
        raise self.rejection

    def abort(self) -> None:
        """Forget the body, deleting anything already written."""
        self._upload.discard()

    def _reject(self, failure: Failure) -> None:
        self._upload.discard()
        error = failure.value
        if isinstance(error, _UploadRejected):
            self.rejection = error
        elif isinstance(error, ParserLimitReached):
            self.rejection = _UploadRejected(413, f"multipart limit reached: {error}")
        elif isinstance(error, MultipartError):
            self.rejection = _UploadRejected(400, f"malformed multipart body: {error}")
        elif isinstance(error, OSError):
            self._upload.log.failure("Could not store upload", failure)
            self.rejection = _UploadRejected(
                500, f"could not store upload: {error.strerror or error}"
            )
        else:
            self._upload.log.failure("Unexpected error storing upload", failure)
            self.rejection = _UploadRejected(500, "internal error storing upload")

    def _feed(self, data: bytes) -> None:
        raise NotImplementedError()

    def _finish(self) -> None:
        raise NotImplementedError()


class _RejectedBody(_Body):
    """A body refused from its headers alone (e.g. multipart without boundary)."""

    def __init__(self, upload: _PendingUpload, rejection: _UploadRejected) -> None:
        super().__init__(upload)
        self.rejection = rejection


class _RawBody(_Body):
    """A non-multipart body: stored as one file."""

    def __init__(self, upload: _PendingUpload, filename: str | None) -> None:
        super().__init__(upload)
        self._filename = filename
        self._file: _IncomingFile | None = None

    def _target(self) -> _IncomingFile:
        if self._file is None:
            self._file = self._upload.new_file(None, self._filename)
        return self._file

    def _feed(self, data: bytes) -> None:
        self._target().write(data)

    def _finish(self) -> None:
        # An empty body still makes an (empty) file.
        self._target().close()


class _MultipartBody(_Body):
    """A C{multipart/form-data} body: file parts go to disk, fields are counted."""

    def __init__(
        self, upload: _PendingUpload, boundary: bytes, content_length: int | None
    ) -> None:
        super().__init__(upload)
        self._parser = PushMultipartParser(
            boundary,
            content_length=-1 if content_length is None else content_length,
            max_header_size=MAX_PART_HEADER_SIZE,
            max_header_count=MAX_PART_HEADERS,
            max_segment_count=MAX_PARTS,
        )
        self._file: _IncomingFile | None = None
        self._field_size = 0

    def _feed(self, data: bytes) -> None:
        for event in self._parser.parse(data):
            if isinstance(event, MultipartSegment):
                if event.filename is not None:
                    self._file = self._upload.new_file(event.name, event.filename)
                else:
                    # Only the name: values may be passwords (userPwd).
                    self.field_names.append(event.name or "")
                    self._field_size = 0
            elif event is None:
                if self._file is not None:
                    self._file.close()
                    self._file = None
            elif self._file is not None:
                self._file.write(event)
            else:
                self._field_size += len(event)
                if self._field_size > MAX_FIELD_SIZE:
                    raise _UploadRejected(
                        413,
                        f"form field {self.field_names[-1]!r} is larger than "
                        f"{MAX_FIELD_SIZE} bytes",
                    )

    def _finish(self) -> None:
        # Raises ParserError unless the closing boundary was seen.
        self._parser.close()


# ---------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------


def _json_body(request: Request, status: int, document: dict[str, Any]) -> bytes:
    body = json.dumps(document).encode("utf-8") + b"\n"
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return body


class SandboxRequest(Request):
    """
    A request whose body is streamed to disk as it arrives.

    twisted.web normally spools the whole body into C{self.content} before
    rendering; that would hold multi-gigabyte uploads in memory or in an
    anonymous temporary file.  Here C{gotLength} and C{handleContentChunk}
    hand each chunk to a L{_Body} and C{content} stays an empty buffer.
    """

    def __init__(self, channel: HTTPChannel, *args: Any, **kwargs: Any) -> None:
        kwargs["parsePOSTFormSubmission"] = False
        super().__init__(channel, *args, **kwargs)
        self._site: SandboxSite = channel.site  # type: ignore[attr-defined]
        self._body: _Body | None = None
        #: Set once the body is complete for POST and PUT.
        self.upload_outcome: _UploadResult | _UploadRejected | None = None

    def gotLength(self, length: int | None) -> None:
        """Headers are in: prepare the body's destination (lazily, on disk)."""
        self.content = io.BytesIO()
        if length != 0:
            self._body = self._open_body(length)

    def handleContentChunk(self, data: bytes) -> None:
        """Stream a body chunk to disk instead of buffering it."""
        if self._body is not None:
            self._body.feed(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """The whole body is in: publish or discard the upload, then render."""
        if command in _UPLOAD_METHODS:
            if self._body is None:
                self._body = self._open_body(0)
            try:
                self.upload_outcome = self._body.finish()
            except _UploadRejected as rejection:
                self.upload_outcome = rejection
                self._site.logger.warn(
                    "Upload rejected with {status}: {error}",
                    status=rejection.status,
                    error=rejection.message,
                    method=command.decode("latin-1"),
                )
            else:
                self._site.logger.info(
                    "Upload {upload} received: {count} file(s), {size} bytes",
                    upload=self.upload_outcome.upload_id,
                    count=len(self.upload_outcome.files),
                    size=sum(entry["size"] for entry in self.upload_outcome.files),
                )
        elif self._body is not None:
            # A body on GET, DELETE...: not an upload, keep nothing.
            self._body.abort()
        super().requestReceived(command, path, version)

    def connectionLost(self, reason: Failure) -> None:
        """Delete whatever a client that went away had sent so far."""
        body = self._body
        if body is not None and not body.done:
            body.abort()
            self._site.logger.warn(
                "Upload abandoned: connection lost after {received} bytes of "
                "body; partial files deleted",
                received=body.received,
            )
        super().connectionLost(reason)

    def _open_body(self, length: int | None) -> _Body:
        upload = _PendingUpload(self._site)
        content_type = _header(self, b"Content-Type")
        media_type, options = parse_options_header(content_type)
        if media_type == "multipart/form-data":
            boundary = options.get("boundary")
            if not boundary:
                return _RejectedBody(
                    upload, _UploadRejected(400, "multipart/form-data without boundary")
                )
            try:
                # The header was read as Latin-1: its own bytes delimit the
                # parts, not their UTF-8 re-encoding.
                return _MultipartBody(upload, boundary.encode("latin-1"), length)
            except MultipartError as error:
                return _RejectedBody(
                    upload, _UploadRejected(400, f"bad multipart boundary: {error}")
                )
        disposition = _header(self, b"Content-Disposition")
        filename = parse_content_disposition(disposition)[2] if disposition else None
        return _RawBody(upload, filename)


def _header(request: Request, name: bytes) -> str:
    values = request.requestHeaders.getRawHeaders(name)
    return values[0].decode("latin-1") if values else ""


class _SandboxResource(Resource):
    """Answers every path: a health document, receipts, or 405."""

    isLeaf = True

    def render(self, request: SandboxRequest) -> bytes:  # type: ignore[override]
        method = request.method
        if method in (b"GET", b"HEAD"):
            body = _json_body(
                request, 200, {"service": "e-PMSI sandbox", "status": "ok"}
            )
            if method == b"HEAD":
                request.setHeader(b"Content-Length", b"%d" % (len(body),))
                return b""
            return body
        if method in _UPLOAD_METHODS:
            outcome = request.upload_outcome
            if isinstance(outcome, _UploadResult):
                return _json_body(
                    request,
                    200,
                    {
                        "status": "received",
                        "method": method.decode("latin-1"),
                        "path": request.path.decode("latin-1"),
                        "upload": outcome.upload_id,
                        "files": outcome.files,
                        "fields": outcome.fields,
                    },
                )
            if isinstance(outcome, _UploadRejected):
                return _json_body(
                    request, outcome.status, {"status": "error", "error": outcome.message}
                )
            return _json_body(
                request, 500, {"status": "error", "error": "upload was not processed"}
            )
        request.setHeader(b"Allow", b", ".join(_ALLOWED_METHODS))
        return _json_body(
            request,
            405,
            {"status": "error", "error": f"method {method.decode('latin-1')} not allowed"},
        )


class _SandboxChannel(HTTPChannel):
    """An HTTP/1.1 channel that tells its site when it opens and closes."""

    site: SandboxSite

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site._channel_opened(self)

    def connectionLost(self, reason: Failure) -> None:
        try:
            super().connectionLost(reason)
        finally:
            self.site._channel_closed(self)


class SandboxSite(Site):
    """
    The sandbox's web site: streams uploads into C{upload_directory}.

    It tracks its connections so that tests and L{SandboxService} can close
    them (L{close_connections}) and leave a clean reactor behind.
    """

    # Not "log": HTTPFactory.log() writes the access log.
    logger = Logger()
    protocol = _SandboxChannel  # type: ignore[assignment]
    requestFactory = SandboxRequest

    def __init__(self, upload_directory: FilePath, reactor: Any = None) -> None:
        super().__init__(_SandboxResource(), reactor=reactor)
        self.upload_directory = upload_directory
        self._counter = 0
        self._channels: set[_SandboxChannel] = set()
        self._idle_waiters: list[Deferred[None]] = []

    def acceptableProtocols(self) -> list[bytes]:
        """Only HTTP/1.1: body streaming is implemented for it alone."""
        return [b"http/1.1"]

    def close_connections(self) -> Deferred[None]:
        """Abort every open connection; fires once they are all gone."""
        if not self._channels:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        for channel in list(self._channels):
            transport = channel.transport
            if transport is not None:
                transport.abortConnection()  # type: ignore[attr-defined]
        return waiter

    def _channel_opened(self, channel: _SandboxChannel) -> None:
        self._channels.add(channel)

    def _channel_closed(self, channel: _SandboxChannel) -> None:
        self._channels.discard(channel)
        if not self._channels:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def _allocate_upload(self) -> tuple[str, FilePath]:
        """
        Reserve a fresh, sortable upload id and create its hidden folder.

        Ids look like C{20261125T192233-000001} (UTC time, then a counter)
        so that C{ls} lists uploads in arrival order.
        """
        self.upload_directory.makedirs(ignoreExistingDirectory=True)
        stamp = datetime.datetime.fromtimestamp(
            self.reactor.seconds(), datetime.timezone.utc
        ).strftime("%Y%m%dT%H%M%S")
        while True:
            self._counter += 1
            upload_id = f"{stamp}-{self._counter:06d}"
            if self.upload_directory.child(upload_id).exists():
                continue
            folder = self.upload_directory.child(f".{upload_id}{_PARTIAL_SUFFIX}")
            try:
                os.mkdir(folder.path, 0o700)
            except FileExistsError:
                continue
            return upload_id, folder


def make_sandbox_site(upload_directory: FilePath, reactor: Any = None) -> SandboxSite:
    """
    Build the sandbox web site storing uploads under C{upload_directory}.

    @param reactor: used for upload time stamps and HTTP timeouts; the global
        reactor when L{None}.
    """
    upload_directory.makedirs(ignoreExistingDirectory=True)
    return SandboxSite(upload_directory, reactor)


# ---------------------------------------------------------------------------
# Service
# ---------------------------------------------------------------------------


def _url_host(interface: str) -> str:
    """The host part of a URL reaching C{interface}."""
    if interface in ("", "0.0.0.0"):
        return "127.0.0.1"
    if interface == "::":
        return "::1"
    return interface


class SandboxService(Service):
    """
    Runs the sandbox over TLS, e.g. under C{twistd} or in a benchmark.

    Everything touching the disk or the network happens in C{startService},
    so building the service is free of side effects.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        directory: FilePath,
        port: int = 8443,
        interface: str = "127.0.0.1",
        hostnames: Sequence[str] = DEFAULT_HOSTNAMES,
    ) -> None:
        self._reactor = reactor
        self.directory = directory
        self.port_number = port
        self.interface = interface
        self.hostnames = tuple(hostnames)
        self.port: IListeningPort | None = None
        self.url: str | None = None
        self.certificates: SandboxCertificates | None = None
        self.site: SandboxSite | None = None

    def startService(self) -> None:
        """Create/reuse the certificates and start listening."""
        host = _url_host(self.interface)
        hostnames = list(self.hostnames)
        # The URL we advertise must be covered by the certificate.
        if all(_parse_host(host) != _parse_host(name) for name in hostnames):
            hostnames.append(host)
        certificates = ensure_certificates(self.directory.child("tls"), hostnames)
        site = make_sandbox_site(self.directory.child("uploads"), self._reactor)
        options = server_tls_options(
            certificates.cert_path.getContent(), certificates.key_path.getContent()
        )
        port = self._reactor.listenSSL(
            self.port_number, site, options, interface=self.interface
        )
        super().startService()
        self.certificates, self.site, self.port = certificates, site, port
        self.url = f"https://{host_port(host, port.getHost().port)}"
        self.log.info(
            "e-PMSI sandbox listening on {url}; uploads are stored in "
            "{upload_directory}; its CA certificate is {ca_path} "
            "(pass it to --ca-file)",
            url=self.url,
            ca_path=certificates.ca_path.path,
            upload_directory=site.upload_directory.path,
        )

    def stopService(self) -> Deferred[None]:
        """Stop listening and close open connections (in-flight uploads are dropped)."""
        super().stopService()
        port, site = self.port, self.site
        if port is None or site is None:
            return succeed(None)
        stopping = maybeDeferred(port.stopListening)
        closing = site.close_connections()
        done: Deferred[Any] = gatherResults([stopping, closing], consumeErrors=True)
        return done.addCallback(lambda _: None)
