"""
How long the workstation waits, and on what: a connect timeout, and a stall
watchdog that bounds silence rather than duration.  Shared by the relay
protocol and the direct mode, so that both give up on the same terms.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

#: Connecting to the relay (and its WELCOME), or to e-PMSI directly.
DEFAULT_TIMEOUT = 10.0
#: Longer than the relay's own wait on e-PMSI (its --epmsi-timeout, 300 s by
#: default), so that when e-PMSI is the slow side the relay's error, which
#: says so, arrives before the workstation gives up on its own.
DEFAULT_STALL_TIMEOUT = 360.0


class Watchdog:
    """
    Calls C{on_stall} once nothing has moved for C{seconds}: a bound on
    silence rather than on duration, so that a big upload that keeps moving
    is never cut, while a peer that stops taking or sending bytes is.
    """

    def __init__(self, clock: IReactorTime, seconds: float, on_stall: Callable[[], object]) -> None:
        self._clock = clock
        self.seconds = seconds
        self._on_stall = on_stall
        self._call: IDelayedCall | None = None

    def start(self) -> None:
        self.stop()
        self._call = self._clock.callLater(self.seconds, self._expired)

    def progress(self) -> None:
        if self._call is not None and self._call.active():
            self._call.reset(self.seconds)

    def stop(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _expired(self) -> None:
        self._call = None
        self._on_stall()

