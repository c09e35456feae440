"""
The workstation's operations: send a file to e-PMSI, or test the
connection, through a relay (the e-POP protocol, L{epop.workstation.protocol})
or directly (HTTPS, L{epop.workstation.direct}).

Everything returns a L{Deferred} and takes the reactor as its first argument::

    from twisted.internet.task import react
    from epop.workstation import RelayAddress, send_file

    def main(reactor):
        d = send_file(reactor, "rss.zip", to="/syriusUpload.do", field="theFile",
                      relay=RelayAddress.parse("10.1.2.3"))
        d.addCallback(lambda reply: print(reply.status, reply.body))
        return d

    react(main)
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.error import ConnectingCancelledError
from twisted.python.failure import Failure

from epop.addressing import DEFAULT_PORT, host_port, ip_of
from epop.epmsi.proxy import ProxyConfig
from epop.epmsi.upstream import CheckResult
from epop.errors import EpopError, describe_connect_failure
from epop.local_tls import ClientTLS, tls_version
from epop.messages import Text, reason_of, system_reason
from epop.multipart import MultipartFileBody, make_cooperator
from epop.workstation.deadlines import DEFAULT_STALL_TIMEOUT, DEFAULT_TIMEOUT
from epop.workstation.direct import send_direct, test_direct
from epop.workstation.outcomes import Reply, TestReport
from epop.workstation.protocol import RelayClientProtocol
from epop.workstation.upload import ProgressCallback, Upload

DEFAULT_RELAY_PORT = DEFAULT_PORT
# e-PMSI's upload form (/syriusUpload.do) carries the file in this field.
DEFAULT_FIELD = "theFile"


#: One label of a host name (RFC 1123): letters, digits, inner hyphens.
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _is_host_name(host: str) -> bool:
    """Whether C{host} is a host name a resolver takes (an international one in its IDNA form)."""
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        return False
    labels = ascii_host.removesuffix(".").split(".")
    return len(ascii_host) <= 253 and all(_LABEL.fullmatch(label) for label in labels)


@dataclass(frozen=True)
class RelayAddress:
    """A relay's address as a person types it: C{HOST}, C{HOST:PORT}, C{[v6]:PORT}."""

    host: str
    port: int = DEFAULT_RELAY_PORT

    @classmethod
    def parse(cls, text: str) -> "RelayAddress":
        """
        C{HOST}, C{HOST:PORT}, C{[IPv6]:PORT} or a bare IPv6 address, the
        host a name or an IP address: checked here, so that a URL or a typo
        is refused when typed or saved, not met later as a library's error
        in the middle of a connection.

        @raise ValueError: saying what is wrong; L{parse_setting} names the
            flag or setting that holds C{text}.
        """
        text = text.strip()
        if "://" in text:
            netloc = urlsplit(text).netloc.rpartition("@")[2]
            raise ValueError(
                Text("give HOST[:PORT], not a URL (e.g. {example})", example=netloc or "10.1.2.3:3358")
            )
        host, port = text, None
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise ValueError(Text("expected [IPv6]:PORT"))
            if ip_of(host) is None or ":" not in host:
                raise ValueError(Text("{host} is not an IPv6 address", host=repr(host)))
            port = rest[1:] if rest else None
        elif text.count(":") == 1:
            host, port = text.split(":")
        elif ":" in text and ip_of(text) is None:
            raise ValueError(Text("{host} is not an IPv6 address: write it [IPv6]:PORT", host=repr(text)))
        if not host:
            raise ValueError(Text("no host"))
        if ip_of(host) is None and not _is_host_name(host):
            raise ValueError(Text("{host} is not a host name or an IP address", host=repr(host)))
        if port is None:
            return cls(host)
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(Text("invalid port {port}: expected a number from 1 to 65535", port=repr(port)))
        return cls(host, int(port))

    @classmethod
    def parse_setting(cls, name: str, text: str) -> "RelayAddress":
        """
        L{parse}, its error naming where C{text} came from (C{--relay},
        C{relay}, C{RELAY}) as the person typed it.

        @raise ValueError: "--relay http://10.1.2.3: give HOST[:PORT], ...".
        """
        try:
            return cls.parse(text)
        except ValueError as e:
            raise ValueError(
                Text("{name} {value}: {why}", name=name, value=shlex.quote(text), why=reason_of(e))
            ) from None

    def __str__(self) -> str:
        return host_port(self.host, self.port)


def connect_to_relay(
    reactor: Any,
    relay: RelayAddress,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    tls: ClientTLS | None = None,
    stall_timeout: float = DEFAULT_STALL_TIMEOUT,
) -> Deferred[RelayClientProtocol]:
    """
    Connect and shake hands, encrypted when C{tls} is given; failures are
    L{EpopError}s that say what to check (no answer in time, refused, not
    authorized, certificate...).
    """
    endpoint: Any = HostnameEndpoint(reactor, relay.host, relay.port, timeout=timeout)
    creator = None
    if tls is not None:
        try:
            creator = tls.creator(relay.host)
        except ValueError as e:
            return fail(EpopError("bad-settings", reason_of(e)))
        endpoint = wrapClientTLS(creator, endpoint)
    d = connectProtocol(endpoint, RelayClientProtocol(reactor, timeout, stall_timeout))
    d.addCallback(lambda protocol: protocol.welcomed)

    def failed(failure: Failure) -> Failure:
        if failure.check(CancelledError, ConnectingCancelledError):
            return Failure(CancelledError())
        if tls is not None and creator is not None:
            explained = tls.explain(creator, failure, str(relay))
            if explained is not None:
                return Failure(explained)
        return Failure(describe_connect_failure(failure, str(relay), timeout=timeout))

    return d.addErrback(failed)


def send_file(
    reactor: Any,
    path: str,
    *,
    to: str,
    field: str = DEFAULT_FIELD,
    fields: Sequence[tuple[str, str]] = (),
    relay: RelayAddress | None = None,
    epmsi: str | None = None,
    ca_file: str | None = None,
    proxy: ProxyConfig | None = None,
    tls: ClientTLS | None = None,
    output: Any = None,
    timeout: float = DEFAULT_TIMEOUT,
    stall_timeout: float = DEFAULT_STALL_TIMEOUT,
    progress: ProgressCallback | None = None,
) -> Deferred[Reply]:
    """
    Upload C{path} as a multipart/form-data POST to C{to} on e-PMSI, through
    C{relay} (encrypted with C{tls} if given) or, when C{relay} is C{None},
    directly to C{epmsi} (through C{proxy} if given).

    e-PMSI's answer body goes to C{output} as it arrives; without one it is
    collected in L{Reply.body}.  C{progress}, if given, is told at each
    write how many bytes of the form have left and how many there are;
    L{Reply.answered_at} says when e-PMSI's answer came.

    The Deferred always fires: C{timeout} bounds connecting (and the relay's
    WELCOME), C{stall_timeout} any silence after that (nothing of the file
    taken, nothing of the answer received).  Failures are L{UploadFailed}:
    the error, the step, and whether e-PMSI may have the file.  Cancelling
    the Deferred stops the upload before e-PMSI gets the whole file (unless
    all of it was already sent), and fails it with code C{cancelled}.
    """
    try:
        body = MultipartFileBody(
            path, field=field, fields=fields, cooperator=make_cooperator(reactor)
        )
    except OSError as e:
        return fail(
            EpopError("file-unreadable", Text("Cannot read {path}: {why}.", path=path, why=system_reason(e)))
        )
    headers = [("Content-Type", body.content_type)]
    if relay is not None:
        upload = Upload(body, path, via_relay=True, watchdog=None, progress=progress)
        d = connect_to_relay(reactor, relay, timeout=timeout, tls=tls, stall_timeout=stall_timeout)

        def connected(protocol: RelayClientProtocol) -> Deferred[Reply]:
            upload.started = True
            result = protocol.request("POST", to, headers, upload.body, output)
            return result.addBoth(lambda r: (protocol.close(), r)[1])

        return upload.follow(d.addCallback(connected))
    if epmsi is None:
        return fail(ValueError(Text("give a relay, or an e-PMSI URL to send directly")))
    return send_direct(
        reactor, body, path, to=to, headers=headers, epmsi=epmsi, ca_file=ca_file,
        proxy=proxy, output=output, timeout=timeout, stall_timeout=stall_timeout,
        progress=progress,
    )


def test_connection(
    reactor: Any,
    *,
    relay: RelayAddress | None = None,
    epmsi: str | None = None,
    ca_file: str | None = None,
    proxy: ProxyConfig | None = None,
    tls: ClientTLS | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    stall_timeout: float = DEFAULT_STALL_TIMEOUT,
) -> Deferred[TestReport]:
    """
    The manual's "Tester": reach the relay and have it reach e-PMSI, or reach
    e-PMSI directly.  What goes wrong on the way is reported, not raised:
    the report's C{failed_step} and C{error} say which step went wrong and
    why, a relay silent for C{stall_timeout} seconds after the check was
    asked included.

    The Deferred fails only when given neither C{relay} nor C{epmsi}
    (L{ValueError}), or when cancelled through a relay: the connection is
    dropped and it fails with L{CancelledError}.  A direct test that is
    cancelled reports it instead, as its C{"epmsi"} step failing.
    """
    if relay is None:
        if epmsi is None:
            return fail(ValueError(Text("give a relay, or an e-PMSI URL to test directly")))
        return test_direct(reactor, epmsi=epmsi, ca_file=ca_file, proxy=proxy, timeout=timeout)

    started = reactor.seconds()
    report = TestReport(str(relay))

    def connected(protocol: RelayClientProtocol) -> Deferred[TestReport]:
        report.relay_elapsed = reactor.seconds() - started
        report.protocol_version = protocol.version
        report.tls_version = tls_version(protocol.transport)

        def checked(result: CheckResult) -> TestReport:
            report.epmsi = result
            if not result.ok:
                report.error = result.error
                report.failed_step = "epmsi"
            return report

        def lost(failure: Failure) -> TestReport:
            failure.trap(EpopError)
            report.error = failure.value
            report.failed_step = "relay"
            return report

        d = protocol.check().addCallbacks(checked, lost)
        return d.addBoth(lambda r: (protocol.close(), r)[1])

    def unreachable(failure: Failure) -> TestReport:
        failure.trap(EpopError)
        report.error = failure.value
        report.failed_step = "relay"
        return report

    return connect_to_relay(
        reactor, relay, timeout=timeout, tls=tls, stall_timeout=stall_timeout
    ).addCallbacks(
        connected, unreachable
    )
