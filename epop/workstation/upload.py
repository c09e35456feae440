"""
One upload as the workstation follows it: the bytes counted as they leave
(each write is progress for the stall watchdog, and for whoever shows the
upload's progress: L{ProgressCallback}), and the outcome explained
as an L{UploadFailed} that says at which step it failed and whether e-PMSI
may have the file.  Through a relay or directly, the same account.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from epop.errors import EpopError
from epop.messages import Text
from epop.workstation.deadlines import Watchdog
from epop.workstation.outcomes import Reply, UploadFailed


#: Told, at each write, how many bytes of the upload have left the
#: workstation and how many there are in all.  A write happens when the
#: connection takes it: while the relay or e-PMSI is slower, flow control
#: pauses the body, so the count never runs ahead of the connection.
ProgressCallback = Callable[[int, int], None]


class CountingConsumer:
    """Passes the upload on, counting it and reporting each write as progress."""

    def __init__(self, consumer: Any, on_write: Any) -> None:
        self._consumer = consumer
        self._on_write = on_write

    def write(self, data: bytes) -> None:
        self._on_write(data)
        self._consumer.write(data)


@implementer(IBodyProducer)
class WatchedBody:
    """
    A body producer whose writes are counted, for the stall watchdog and
    the progress shown: the one place where the upload's bytes leave, through
    a relay or directly.
    """

    def __init__(
        self, body: IBodyProducer, on_write: Any, path: str, progress: ProgressCallback | None = None
    ) -> None:
        self._body = body
        self._on_write = on_write
        self._progress = progress
        self.path = path
        self.length = body.length
        self.sent = 0
        # People follow their file, not the form around it (a multipart body says where it is).
        self._file_offset: int = getattr(body, "file_offset", 0)
        self._file_size: int = getattr(body, "file_size", body.length)

    def _wrote(self, data: bytes) -> None:
        self.sent += len(data)
        self._on_write()
        if self._progress is not None:
            self._progress(min(max(self.sent - self._file_offset, 0), self._file_size), self._file_size)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        return self._body.startProducing(CountingConsumer(consumer, self._wrote))

    def pauseProducing(self) -> None:
        self._body.pauseProducing()

    def resumeProducing(self) -> None:
        self._body.resumeProducing()

    def stopProducing(self) -> None:
        self._body.stopProducing()


class Upload:
    """
    One L{epop.workstation.send_file}: how far it got, to say what failed
    and what became of the file.
    """

    def __init__(
        self,
        body: IBodyProducer,
        path: str,
        via_relay: bool,
        watchdog: Watchdog | None,
        progress: ProgressCallback | None = None,
    ) -> None:
        self.body = WatchedBody(body, self._progress, path, progress)
        self.via_relay = via_relay
        self.started = False
        self.stalled = False
        self.cancelled = False
        self.watchdog = watchdog
        self._inner: Deferred[Any] | None = None
        self._result: Deferred[Reply] | None = None

    def follow(self, inner: Deferred[Any]) -> Deferred[Reply]:
        """
        The Deferred the caller gets: C{inner}'s outcome, explained.  Owning
        it lets cancelling say "cancelled", whatever error cancelling the
        inner work turns into (an HTTP client's, for one).
        """
        self._inner = inner
        self._result = Deferred(self._cancel)
        inner.addErrback(self.explain).addBoth(self._settle)
        return self._result

    def _settle(self, outcome: Any) -> None:
        assert self._result is not None
        if self._result.called:
            return  # already failed as cancelled
        if isinstance(outcome, Failure):
            self._result.errback(outcome)
        else:
            self._result.callback(outcome)

    def _cancel(self, result: Deferred[Reply]) -> None:
        self.cancelled = True
        assert self._inner is not None
        self._inner.cancel()
        if not result.called:
            result.errback(self.explain(Failure(CancelledError())))

    def stall(self) -> None:
        """The watchdog's verdict: stop the work in flight."""
        self.stalled = True
        if self._inner is not None:
            self._inner.cancel()

    def _progress(self) -> None:
        if self.watchdog is not None:
            self.watchdog.progress()

    @property
    def whole_file_sent(self) -> bool:
        return self.body.sent >= self.body.length

    def stalled_error(self) -> EpopError:
        assert self.watchdog is not None
        seconds = f"{self.watchdog.seconds:g}"
        if not self.whole_file_sent:
            text = Text(
                "Nothing moved for {seconds} s while sending the file to e-PMSI "
                "({sent} of {total} bytes sent): e-PMSI stopped taking it.",
                seconds=seconds,
                sent=self.body.sent,
                total=self.body.length,
            )
        else:
            text = Text(
                "e-PMSI's answer did not come, or stopped coming, for {seconds} s after "
                "the whole file was sent: no answer in time.",
                seconds=seconds,
            )
        return EpopError("stalled", text, "timeout")

    def explain(self, failure: Failure) -> Failure:
        if self.watchdog is not None:
            self.watchdog.stop()
        if failure.check(UploadFailed):
            return failure
        if self.stalled:
            reason: EpopError = self.stalled_error()
        elif self.cancelled:
            reason = EpopError("cancelled", Text("The upload was cancelled."))
        elif isinstance(failure.value, EpopError):
            reason = failure.value
        else:
            return failure
        whole = self.whole_file_sent
        if not self.started:
            step = "connect"
        elif never_reached(reason):
            step = "epmsi"
        else:
            step = "answer" if whole else "upload"
        maybe = whole and step != "epmsi" and reason.code not in ("integrity-mismatch", "file-unreadable")
        return Failure(
            UploadFailed(reason, step, via_relay=self.via_relay, maybe_delivered=maybe)
        )


#: Why the relay could not reach e-PMSI when it never opened a connection
#: to it (nor a tunnel through the proxy): e-PMSI got nothing of the file.
NEVER_REACHED_CAUSES = frozenset({
    "refused", "dns", "no-route", "connect",
    "proxy-unreachable", "proxy-timeout", "proxy-auth-required", "proxy-auth-rejected",
    "proxy-auth-unsupported", "proxy-forbidden", "proxy-error",
})


def never_reached(reason: EpopError) -> bool:
    """
    The relay says it never reached e-PMSI (a small file may have been
    wholly sent to the relay first): not delivered, whatever the relay took.
    """
    return reason.code == "epmsi-unreachable" and reason.cause in NEVER_REACHED_CAUSES


def file_unreadable(failure: Failure, path: str) -> EpopError:
    """The file could not be read while it was being sent."""
    why = getattr(failure.value, "strerror", None) or failure.getErrorMessage()
    return EpopError(
        "file-unreadable",
        Text("Could not read {path} while sending it: {why}.", path=path, why=why),
    )

