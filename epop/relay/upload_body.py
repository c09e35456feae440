"""
An upload on its way through the relay, as e-PMSI's connection takes it.

This is where the end-to-end integrity rule lives: the body's last bytes
wait in the relay until the workstation's SHA-256 matches, so that e-PMSI
never receives a complete but corrupt file.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from epop.tuning import HELD_TAIL, tune

if TYPE_CHECKING:
    from epop.relay.protocol import RelayProtocol

__all__ = ["UploadBody"]


@implementer(IBodyProducer)
class UploadBody:
    """
    The upload as e-PMSI's connection sees it: bytes from the workstation,
    hashed on the way, with the body's last L{HELD_TAIL} bytes held back until
    the client's SHA-256 matches.  If it does not, the request is aborted that
    many bytes short, so e-PMSI never receives a complete but corrupt file.

    Holding back a tail rather than the last read keeps what each upload
    pins down in the relay to a few bytes instead of up to a whole read
    (L{epop.tuning.READ_SIZE}), and every read but the one that reaches the
    tail is forwarded as it came, without a copy.
    """

    def __init__(self, length: int, protocol: "RelayProtocol") -> None:
        self.length = length
        self.received = 0
        self._protocol = protocol
        self._sha = hashlib.sha256()
        self._consumer: Any = None
        self._done: Deferred[None] | None = None
        self._early: list[bytes] = []
        self._forwarded = 0
        self._held = b""
        self._verified = False
        self._failure: BaseException | None = None
        self._budget = protocol.factory.read_budget
        self._budget.started()
        self._in_flight = True

    # IBodyProducer, driven by the HTTP client
    def startProducing(self, consumer: Any) -> Deferred[None]:
        self._consumer = consumer
        self._done = Deferred()
        if self._failure is not None:
            self._done.errback(self._failure)
            return self._done
        early, self._early = self._early, []
        for chunk in early:
            self._forward(chunk)
        if self._verified:
            self._flush()
        else:
            self._resume()
        return self._done

    def pauseProducing(self) -> None:
        self._protocol.pause_client()

    def resumeProducing(self) -> None:
        self._resume()

    def _resume(self) -> None:
        # Each read waits in e-PMSI's connection until sent: its size is this
        # upload's share of what the uploads in flight may hold together.
        tune(self._protocol.transport, read_size=self._budget.read_size())
        self._protocol.resume_client()

    def _landed(self) -> None:
        """No more bytes of this upload will be read or held."""
        if self._in_flight:
            self._in_flight = False
            self._budget.ended()

    def stopProducing(self) -> None:
        """
        e-PMSI's connection is gone; its request fails on its own and the
        operation reports that failure.
        """

    # fed by the relay protocol
    def body_received(self, data: bytes) -> None:
        self._sha.update(data)
        self.received += len(data)
        if self._consumer is None:
            self._early.append(data)
        else:
            self._forward(data)

    def _forward(self, data: bytes) -> None:
        releasable = self.length - HELD_TAIL - self._forwarded
        if releasable >= len(data):
            self._consumer.write(data)
            self._forwarded += len(data)
            return
        if releasable > 0:
            self._consumer.write(data[:releasable])
            self._forwarded += releasable
            data = data[releasable:]
        self._held += data

    @property
    def held(self) -> int:
        """Bytes received but kept from e-PMSI until the hash matches."""
        return len(self._held) + sum(len(chunk) for chunk in self._early)

    def verify(self, sha256: object) -> bool:
        """Compare the client's hash; on a match, release the held tail."""
        expected = self._sha.hexdigest()
        if not isinstance(sha256, str) or not hmac.compare_digest(expected, sha256.lower()):
            return False
        self._verified = True
        if self._consumer is not None:
            self._flush()
        return True

    def _flush(self) -> None:
        if self._held:
            self._consumer.write(self._held)
            self._forwarded += len(self._held)
            self._held = b""
        self._landed()
        assert self._done is not None
        self._done.callback(None)
        # The HTTP client unregisters us once the body is done: it will not
        # resume the workstation's connection if its last write paused it.
        self._protocol.resume_client()

    def abort(self, reason: BaseException) -> None:
        """Make e-PMSI's request fail; it never gets the held tail."""
        self._held = b""
        self._early = []
        self._failure = reason
        self._landed()
        if self._done is not None and not self._done.called:
            self._done.errback(reason)

