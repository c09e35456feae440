"""
What the workstation's operations end with, and how each is said to a
person: e-PMSI's L{Reply}, the test's L{TestReport}, an upload's
L{UploadFailed}.  Through a relay or directly, the words are the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from epop.epmsi.upstream import CheckResult
from epop.errors import EpopError
from epop.messages import Text


@dataclass
class Reply:
    """
    e-PMSI's answer: its status line, headers and body (if collected).

    @ivar answered_at: when its status line arrived, on the reactor's clock,
        to say how long e-PMSI took after the last byte.
    """

    status: int
    reason: str
    headers: list[tuple[str, str]]
    length: int = 0
    body: bytes | None = None
    sent: int = 0
    answered_at: float | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


#: The relay's ERROR codes for a limit on connections or checks: it was
#: reached and answered, and asks to come back later.
_RELAY_LIMITS = frozenset(
    {
        "too-many-checks",
        "too-many-connections",
        "too-many-connections-from-client",
        "too-many-silent-connections",
    }
)


@dataclass
class TestReport:
    """
    The manual's "Tester", step by step: reaching the relay, then the relay
    reaching e-PMSI (or, direct, reaching e-PMSI).

    @ivar failed_step: C{None} on success; else C{"relay"} (the relay could
        not be reached, refused, closed, sent garbage or went silent),
        C{"epmsi"} (e-PMSI could not be reached, by the relay or directly), or
        C{"settings"} (a direct test's e-PMSI URL, CA file or proxy cannot be
        used; nothing was tried).
    """

    relay: str | None
    relay_elapsed: float | None = None
    protocol_version: int | None = None
    #: The TLS version of the session with the relay ("TLSv1.3"), if encrypted.
    tls_version: str | None = None
    epmsi: CheckResult | None = None
    error: EpopError | None = None
    failed_step: str | None = None

    @property
    def ok(self) -> bool:
        return self.failed_step is None

    def describe(self, language: str = "en") -> str:
        lines = []
        if self.relay is not None and self.relay_elapsed is not None:
            lines.append(
                Text(
                    "Relay {relay} answered in {ms} ms (e-POP protocol {version}).",
                    relay=self.relay,
                    ms=f"{self.relay_elapsed * 1000:.0f}",
                    version=self.protocol_version,
                )
            )
            if self.tls_version is not None:
                lines.append(Text("Encrypted ({version}).", version=self.tls_version))
        if self.epmsi is not None:
            text = _check_text(self.epmsi)
            lines.append(Text("Through the relay: {check}", check=text) if self.relay else text)
        elif self.error is not None:
            lines.append(self.error.text)
        return "\n".join(line.render(language) for line in lines)

    @property
    def step(self) -> Text:
        """
        Which step failed, in words: the manual's list of causes.  A relay
        that answered but refused on its own account was reached: say which
        of its rules turned the workstation away.
        """
        code = self.error.code if self.error is not None else ""
        if code == "not-authorized":
            return Text("being allowed by the relay")
        if code in ("relay-tls", "tls-required", "tls-not-configured"):
            return Text("encrypting the connection to the relay (TLS)")
        if code in _RELAY_LIMITS:
            return Text("being served by the relay (its limits)")
        if code in ("no-proxy-header", "bad-proxy-header"):
            return Text("reaching the relay through its load balancer")
        if code in ("hello-timeout", "frame-timeout"):
            return Text("sending to the relay within its time limits")
        if self.failed_step == "relay":
            return Text("reaching the relay")
        if self.failed_step == "epmsi" and self.relay is not None:
            return Text("the relay reaching e-PMSI")
        if self.failed_step == "epmsi":
            return Text("reaching e-PMSI")
        return Text("starting")


def _check_text(check: CheckResult) -> Text:
    """
    A check's outcome in words.  A timeout already says how long it waited
    ("no answer in time (3 s)"): the time it took would only say it twice.
    """
    if not check.ok and check.error is not None and check.error.cause == "timeout":
        return check.error.text
    return check.text()


class UploadFailed(EpopError):
    """
    Why L{epop.workstation.send_file} failed, at which step, and whether e-PMSI may have the
    file: a person must know whether to send it again.

    @ivar reason: the underlying error; L{code}, L{cause} and the message
        are its.
    @ivar step: C{"connect"}, C{"upload"}, C{"epmsi"} (the relay never
        reached e-PMSI) or C{"answer"}.
    @ivar maybe_delivered: C{False} when e-PMSI certainly did not get the
        whole file; C{True} when all of it had left and the answer was lost,
        so that only e-PMSI can tell.
    """

    def __init__(
        self, reason: EpopError, step: str, *, via_relay: bool, maybe_delivered: bool
    ) -> None:
        super().__init__(reason.code, reason.text, reason.cause)
        self.reason = reason
        self.step = step
        self.via_relay = via_relay
        self.maybe_delivered = maybe_delivered

    @property
    def step_text(self) -> Text:
        """The step that failed, in words."""
        if self.step == "connect":
            return Text("reaching the relay") if self.via_relay else Text("reaching e-PMSI")
        if self.step == "epmsi":
            return Text("the relay reaching e-PMSI")
        if self.step == "upload":
            if self.via_relay:
                return Text("sending the file through the relay")
            return Text("sending the file to e-PMSI")
        return Text("waiting for e-PMSI's answer")

    def outcome(self, path: str) -> Text:
        """What became of the file, for the person who sent it."""
        if self.maybe_delivered:
            return Text(
                "All of {file} was sent, but the answer was lost (failed step: {step}): "
                "e-PMSI may have received it. Check on e-PMSI before sending it again.",
                file=path,
                step=self.step_text,
            )
        return Text(
            "{file} was not delivered: e-PMSI did not receive it (failed step: {step}).",
            file=path,
            step=self.step_text,
        )

