"""
How slow a workstation may be, and how often it may ask: the relay's time
limits against slow and hostile clients.

The idle timeout restarts at every byte, so on its own it lets a client
trickle a frame, or a body, one byte at a time for ever.  These limits count
from a fixed start instead, so a trickle cannot extend them:

 - L{Deadline}: a whole HELLO, or a whole control frame, must arrive within a
   bounded time.  It stops counting while the relay itself holds the
   workstation back (e-PMSI not ready for more).
 - L{UploadPace}: after a grace period, an upload must keep a minimum
   average rate, measured over the whole upload, without the time the relay
   held it back.  It is checked by a timer, never per chunk, so the body's
   hot path does no more work than before.
 - L{TokenBucket} and L{RatesByClient}: how many e-PMSI checks a connection,
   and a client address, may ask for in a minute.

Every timer runs on the clock it is given, never on the global reactor.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = [
    "DEFAULT_HELLO_TIMEOUT",
    "DEFAULT_FRAME_TIMEOUT",
    "DEFAULT_UPLOAD_MIN_RATE",
    "DEFAULT_UPLOAD_GRACE",
    "DEFAULT_CHECKS_PER_CONNECTION",
    "DEFAULT_CHECKS_PER_CLIENT",
    "Deadline",
    "UploadPace",
    "TokenBucket",
    "RatesByClient",
    "seconds_to_wait",
    "MAX_TRACKED_CLIENTS",
]

#: Defaults, and what they assume.  A whole HELLO (with, for an encrypted
#: session, its TLS handshake) or control frame is a few hundred bytes to a
#: few kilobytes: 30 s lets it through a link of well under 10 kbit/s.
DEFAULT_HELLO_TIMEOUT = 30.0
DEFAULT_FRAME_TIMEOUT = 30.0
#: A remote site's 2 Mbit/s ADSL upload (250 kB/s), saturated and shared by
#: some twenty workstations sending at once, leaves each one about 12 kB/s;
#: TCP shares unevenly, so a slow one may get a quarter of that, 3 kB/s.
#: 1 KiB/s (8 kbit/s) on average over the whole upload, after five minutes,
#: stays well below that while cutting a trickle of a few bytes a second.
DEFAULT_UPLOAD_MIN_RATE = 1024.0
DEFAULT_UPLOAD_GRACE = 300.0
#: e-PMSI checks (each a new TLS connection to e-PMSI): a person pressing
#: "Tester" a few times in a row is never refused; a loop is, after a few.
#: Per address the allowance is larger, for workstations behind one NAT.
DEFAULT_CHECKS_PER_CONNECTION = 6
DEFAULT_CHECKS_PER_CLIENT = 30

#: Client addresses whose check rate the relay remembers at once; beyond
#: that the least recently seen is forgotten, so memory stays bounded.
MAX_TRACKED_CLIENTS = 10_000

#: The pace of an upload is checked at most this often.
_PACE_CHECK_INTERVAL = 1.0


class Deadline:
    """
    A time limit that counts from L{start}, whatever arrives meanwhile, and
    does not count while the workstation is held back (L{hold} to
    L{release}), whether it was started before or during the hold.
    """

    def __init__(self, clock: IReactorTime, seconds: float, expired: Callable[[], None]) -> None:
        self.seconds = seconds
        self._clock = clock
        self._expired = expired
        self._call: IDelayedCall | None = None
        self._holding = False
        #: While held: the time that was left.
        self._left: float | None = None

    @property
    def running(self) -> bool:
        return self._call is not None or self._left is not None

    def start(self) -> None:
        """Count the full time from now (again, if it was running)."""
        self.stop()
        if self._holding:
            self._left = self.seconds
        else:
            self._call = self._clock.callLater(self.seconds, self._fire)

    def stop(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None
        self._left = None

    def hold(self) -> None:
        """Stop counting, keeping the time left."""
        self._holding = True
        if self._call is not None:
            self._left = max(0.0, self._call.getTime() - self._clock.seconds())
            self._call.cancel()
            self._call = None

    def release(self) -> None:
        """Count again, from the time left when it was held."""
        self._holding = False
        if self._left is not None:
            left, self._left = self._left, None
            self._call = self._clock.callLater(left, self._fire)

    def _fire(self) -> None:
        self._call = None
        self._expired()


class UploadPace:
    """
    Whether an upload keeps its minimum average rate.

    The rate is the bytes received over the upload's active time: the time
    since it started, less the time the relay held the workstation back
    (C{held}, a running total of seconds).  It is checked once the grace
    period is over, then whenever the rate could have dropped below the
    minimum if no byte came in the meantime.

    @param minimum: bytes per second; 0 turns the check off.
    @param received: the bytes received so far.
    @param held: seconds the relay has held the workstation back so far, the
        current hold included.
    @param too_slow: called with the bytes received and the active seconds
        when the rate is below the minimum; the pace then stops.
    """

    def __init__(
        self,
        clock: IReactorTime,
        minimum: float,
        grace: float,
        received: Callable[[], int],
        held: Callable[[], float],
        too_slow: Callable[[int, float], None],
    ) -> None:
        self.minimum = minimum
        self.grace = grace
        self._clock = clock
        self._received = received
        self._held = held
        self._too_slow = too_slow
        self._started = clock.seconds()
        self._held_before = held()
        self._call: IDelayedCall | None = None
        if minimum > 0:
            self._call = clock.callLater(grace, self._check)

    def active_seconds(self) -> float:
        """Time that counts against the workstation so far."""
        held = self._held() - self._held_before
        return self._clock.seconds() - self._started - held

    def stop(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None

    def _check(self) -> None:
        self._call = None
        active = self.active_seconds()
        if active < self.grace - 0.001:
            # Held back for part of the grace period: it is not over yet.
            self._call = self._clock.callLater(self.grace - active, self._check)
            return
        received = self._received()
        if received < self.minimum * active:
            self._too_slow(received, active)
            return
        # Without another byte, the rate reaches the minimum at received/minimum.
        wait = max(received / self.minimum - active, _PACE_CHECK_INTERVAL)
        self._call = self._clock.callLater(wait, self._check)


class TokenBucket:
    """
    At most C{per_minute} operations a minute, in bursts of up to as many:
    the bucket holds that many tokens and refills continuously.
    """

    __slots__ = ("capacity", "rate", "tokens", "updated")

    def __init__(self, per_minute: int, now: float) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.tokens = self.capacity
        self.updated = now

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def wait(self, now: float) -> float:
        """Seconds until one operation is allowed: 0 if it is allowed now."""
        self._refill(now)
        if self.tokens >= 1.0:
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def take(self, now: float) -> None:
        self._refill(now)
        self.tokens -= 1.0

    def full_at(self) -> float:
        """When the bucket is full again if nothing is taken: forgetting it then loses nothing."""
        return self.updated + (self.capacity - self.tokens) / self.rate


class RatesByClient:
    """
    One L{TokenBucket} per client address, shared by all its connections.

    Bounded: a bucket is forgotten once it would be full again (it then
    restricts nothing), and beyond C{max_clients} the least recently used
    is forgotten first.
    """

    def __init__(self, per_minute: int, max_clients: int = MAX_TRACKED_CLIENTS) -> None:
        self.per_minute = per_minute
        self._max = max_clients
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def bucket(self, key: str, now: float) -> TokenBucket:
        self._expire(now)
        found = self._buckets.get(key)
        if found is not None:
            self._buckets.move_to_end(key)
            return found
        while len(self._buckets) >= self._max:
            self._buckets.popitem(last=False)
        found = self._buckets[key] = TokenBucket(self.per_minute, now)
        return found

    def _expire(self, now: float) -> None:
        # Least recently used first: each is forgotten at most a minute
        # after its last use, which is all "expiring" needs to mean here.
        while self._buckets:
            oldest = next(iter(self._buckets.values()))
            if oldest.full_at() > now:
                return
            self._buckets.popitem(last=False)


def seconds_to_wait(waits: list[float]) -> int:
    """The longest of C{waits}, in whole seconds, at least 1: for messages."""
    return max(1, math.ceil(max(waits)))
