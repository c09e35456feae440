"""
C{epop send} and C{epop test}: what a workstation does with e-PMSI, through
a relay or directly.

Both take their defaults from the workstation's saved settings
(L{epop.workstation.settings}); flags override them.  Their options are
checked together (L{TargetOptions.resolve}) so that both commands refuse the
same combinations with the same words.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from typing import Any
from twisted.internet.defer import CancelledError, Deferred
from twisted.python import usage
from twisted.python.failure import Failure

from epop.addressing import RELAY_ADDRESS_HELP
from epop.certificates import check_authority_file
from epop.command import (
    EXIT_ANSWER_LOST,
    EXIT_FAILED,
    EXIT_OK,
    Command,
    CommandOptions,
    exit_status_for_signal,
    positive_seconds,
)
from epop.epmsi.proxy import PASSWORD_VARIABLE, ProxyConfig, load_proxy_password, resolve_proxy
from epop.epmsi.origin import DEFAULT_EPMSI_URL, EpmsiOrigin
from epop.local_tls import ClientTLS
from epop.messages import Text, decimal, reason_of
from epop.workstation.client import DEFAULT_FIELD, RelayAddress, send_file, test_connection
from epop.workstation.deadlines import DEFAULT_STALL_TIMEOUT, DEFAULT_TIMEOUT
from epop.workstation.form_fields import FormField, read_form_fields
from epop.workstation.outcomes import Reply, TestReport, UploadFailed
from epop.workstation.progress import make_progress, readable_size
from epop.workstation.settings import ClientSettings

__all__ = ["SendOptions", "TargetOptions", "TestOptions", "send", "test"]

DEFAULT_UPLOAD_PATH = "/syriusUpload.do"


class TargetOptions(CommandOptions):
    """
    Where to send: through a relay, or directly to e-PMSI (perhaps through
    a proxy).  Flags win over the saved settings, which win over defaults.
    """

    secret_options = ("proxy-password-file", "tls-client-key")

    optFlags = [
        ["direct", None, "Send straight to e-PMSI (this workstation has Internet access)."],
        ["tls", None, "Encrypt the connection to the relay (TLS), checking its certificate."],
    ]
    optParameters = [
        ["relay", None, None, f"The relay's address: {RELAY_ADDRESS_HELP}."],
        ["epmsi", None, None, f"e-PMSI's HTTPS origin, with --direct [default: {DEFAULT_EPMSI_URL}]."],
        ["ca-file", None, None, "PEM file of CA certificates trusted for e-PMSI, with --direct."],
        ["proxy", None, None, "With --direct: HTTP proxy http://HOST:PORT, or 'system' for this machine's settings."],
        ["proxy-user", None, None, "With --direct: user name for the proxy."],
        ["proxy-password-file", None, None, f"With --direct: file holding the proxy password (or set {PASSWORD_VARIABLE})."],
        ["relay-ca", None, None, "With --tls: PEM CA certificate that signs the relay's certificate (default: the system's)."],
        ["tls-client-cert", None, None, "With --tls: this workstation's PEM certificate, for relays that require one."],
        ["tls-client-key", None, None, "With --tls: the PEM private key of --tls-client-cert."],
        ["timeout", None, DEFAULT_TIMEOUT, "Seconds to wait for an answer when connecting."],
        ["stall-timeout", None, DEFAULT_STALL_TIMEOUT,
         "Give up after this many seconds with nothing moving once connected: nothing of the "
         "file taken, no answer received. Longer than the relay's own wait on e-PMSI (300 s)."],
    ]

    relay: RelayAddress | None = None
    tls: ClientTLS | None = None
    epmsi: str = DEFAULT_EPMSI_URL
    ca_file: str | None = None
    proxy: ProxyConfig | None = None

    def resolve(self, saved: ClientSettings, environ: Mapping[str, str]) -> None:
        """Combine flags, saved settings and defaults; check they can work."""
        if self["direct"] and self["relay"] is not None:
            raise usage.UsageError(Text("choose one: --relay HOST[:PORT] or --direct, not both"))
        if self["direct"]:
            mode = "direct"
        elif self["relay"] is not None:
            mode = "relay"
        else:
            mode = saved.get("mode") or ("relay" if saved.get("relay") else "")
        if not mode:
            raise usage.UsageError(
                Text("say where to send: --relay HOST[:PORT], or --direct "
                     "(or save it once: epop config set relay HOST)")
            )
        for name in ("timeout", "stall-timeout"):
            self[name] = positive_seconds(name, self[name])
        if mode == "relay":
            self._resolve_relay(saved)
        else:
            self._resolve_direct(saved, environ)

    _TLS_FLAGS = ("relay-ca", "tls-client-cert", "tls-client-key")

    def route(self, language: str | None = None) -> dict[str, Any]:
        """
        Once resolved: the way to e-PMSI and the time limits, as L{send_file}
        and L{test_connection} take them; a proxy is asked to answer in
        C{language}.
        """
        proxy = self.proxy if self.proxy is None else replace(self.proxy, language=language)
        return {
            "relay": self.relay,
            "epmsi": self.epmsi,
            "ca_file": self.ca_file,
            "proxy": proxy,
            "tls": self.tls,
            "timeout": self["timeout"],
            "stall_timeout": self["stall-timeout"],
        }

    def _resolve_relay(self, saved: ClientSettings) -> None:
        # Saved with "epop config set tls yes" (or by "epop trust"), as --tls.
        from_saved = not self["tls"] and saved.get("tls") == "yes"
        encrypted = self["tls"] or from_saved
        if not encrypted and any(self[flag] for flag in self._TLS_FLAGS):
            raise usage.UsageError(Text("--relay-ca and --tls-client-* need --tls"))
        if encrypted:
            if bool(self["tls-client-cert"]) != bool(self["tls-client-key"]):
                raise usage.UsageError(Text("--tls-client-cert and --tls-client-key go together"))
            if self["relay-ca"]:
                try:
                    check_authority_file(self["relay-ca"])
                except ValueError as e:
                    raise usage.UsageError(Text("--relay-ca: {why}", why=reason_of(e))) from None
            relay_ca = self["relay-ca"] or saved.get("relay-ca")
            self.tls = ClientTLS(
                relay_ca,
                self["tls-client-cert"],
                self["tls-client-key"],
                saved_in=str(saved.path) if from_saved else None,
            )
        for flag in ("ca-file", "proxy", "proxy-user", "proxy-password-file"):
            if self[flag] is not None:
                raise usage.UsageError(
                    Text("--{flag} applies to --direct only: through a relay, the relay "
                         "reaches e-PMSI with its own settings", flag=flag)
                )
        if self["relay"] is not None:
            try:
                self.relay = RelayAddress.parse_setting("--relay", self["relay"])
            except ValueError as e:
                raise usage.UsageError(reason_of(e)) from None
        else:
            self.relay = saved.relay_address()
        if self.relay is None:
            raise usage.UsageError(Text("the saved mode is 'relay' but no relay is saved: give --relay HOST"))

    def _resolve_direct(self, saved: ClientSettings, environ: Mapping[str, str]) -> None:
        if self["tls"] or any(self[flag] for flag in self._TLS_FLAGS):
            raise usage.UsageError(Text("--tls and its options apply to --relay: with --direct, e-PMSI is always reached over TLS"))
        self.epmsi = self["epmsi"] or saved.get("epmsi") or DEFAULT_EPMSI_URL
        self.ca_file = self["ca-file"] or saved.get("ca-file")
        try:
            EpmsiOrigin.from_url(self.epmsi)
            password = load_proxy_password(self["proxy-password-file"], environ)
            self.proxy, _ = resolve_proxy(
                self["proxy"] or saved.get("proxy"),
                self.epmsi,
                user=self["proxy-user"] or saved.get("proxy-user"),
                password=password if password is not None else saved.get("proxy-password"),
                environ=environ,
            )
        except ValueError as e:
            raise usage.UsageError(reason_of(e)) from None


class SendOptions(TargetOptions):
    synopsis = "FILE [--relay HOST[:PORT] | --direct] [options]"
    longdesc = (
        "Upload FILE to e-PMSI as an HTML form (multipart/form-data POST). "
        "e-PMSI's answer is written to standard output; the exit status is 0 "
        "only for a 2xx answer, 1 for any other answer or failure, 2 for a usage "
        "error, 3 when the whole file was sent but the answer was lost (check on "
        "e-PMSI before sending again), 130 or 143 when interrupted (SIGINT, "
        "SIGTERM: the upload is stopped before e-PMSI gets the whole file). "
        "Without --relay or --direct, the saved settings say where to send "
        "(see 'epop config'). The defaults fit e-PMSI's upload form "
        f"({DEFAULT_UPLOAD_PATH}, file in the field {DEFAULT_FIELD}). For the "
        "password, use -F userPwd=<FILE (the first line of FILE) or "
        "-F userPwd=<- (standard input), quoted for the shell "
        "(-F 'userPwd=<FILE'): -F userPwd=VALUE would stay in the shell's "
        "history and show in the process list."
    )
    optFlags = [
        ["allow-empty", None, "Send FILE even if it is empty (0 bytes); refused otherwise."],
        ["quiet", "q", "Show no progress (on a terminal a bar, elsewhere a line every 10 % or 30 s); "
                       "errors and the closing line are still written to standard error."],
    ]
    optParameters = [
        ["to", None, None, f"Path on e-PMSI to post the form to [default: {DEFAULT_UPLOAD_PATH}]."],
        ["field", None, None, f"Form field that carries the file [default: {DEFAULT_FIELD}]."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self.fields: list[FormField] = []

    def opt_F(self, text: str) -> None:
        """Extra form field NAME=VALUE (repeatable), e.g. -F year=2026; NAME=<FILE takes the value from FILE's first line, NAME=<- from standard input (asked without echo on a terminal): for a password, use -F userPwd=<FILE."""
        self.fields.append(FormField.parse(text))

    opt_form = opt_F

    def parseArgs(self, *paths: str) -> None:
        if len(paths) != 1:
            # One file a send: e-PMSI answers each upload with its own receipt.
            raise usage.UsageError(
                Text("give the file to send: epop send FILE")
                if not paths
                else Text("one file at a time: {count} were given (send each with its own epop send)", count=len(paths))
            )
        self["file"] = paths[0]

    def postOptions(self) -> None:
        path = self["file"]
        if os.path.isdir(path):
            raise usage.UsageError(Text("{path} is a folder: give the file to send", path=path))
        if not os.path.isfile(path):
            raise usage.UsageError(Text("{path}: no such file", path=path))
        if not os.access(path, os.R_OK):
            raise usage.UsageError(Text("{path}: not readable by this user", path=path))
        if os.path.getsize(path) == 0 and not self["allow-empty"]:
            raise usage.UsageError(
                Text("{path} is empty (0 bytes): check it is the right file, "
                     "or send it anyway with --allow-empty", path=path)
            )

    def resolve(self, saved: ClientSettings, environ: Mapping[str, str]) -> None:
        super().resolve(saved, environ)
        self.to = self["to"] or saved.get("to") or DEFAULT_UPLOAD_PATH
        self.field = self["field"] or saved.get("field") or DEFAULT_FIELD
        if not self.to.startswith("/"):
            raise usage.UsageError(Text("--to must be a path starting with '/', e.g. /syriusUpload.do"))


class TestOptions(TargetOptions):
    synopsis = "[--relay HOST[:PORT] | --direct] [options]"
    longdesc = (
        "Test the connection to e-PMSI, through the relay or directly, and say "
        "which step failed if one did. Without --relay or --direct, the saved "
        "settings say which."
    )


def _how(options: TargetOptions) -> Text:
    """How the file went, for the closing line."""
    if options.relay and options.tls:
        return Text("through relay {relay} (TLS)", relay=str(options.relay))
    if options.relay:
        return Text("through relay {relay}", relay=str(options.relay))
    if options.proxy:
        return Text("directly, through the proxy {proxy}", proxy=options.proxy.address)
    return Text("directly")


class _LineEnd:
    """
    Standard output, noting whether e-PMSI's answer ended its last line:
    only then may the closing lines follow without a blank one between
    (a log would otherwise get one after every send).
    """

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.at_line_start = True

    def write(self, data: bytes) -> None:
        if data:
            self.at_line_start = data.endswith(b"\n")
        self.stream.write(data)

    def flush(self) -> None:
        self.stream.flush()


def send(command: Command, options: SendOptions) -> Deferred[int]:
    """C{epop send}: upload the file, pass e-PMSI's answer on, say how it went."""
    options.resolve(command.saved, command.environ)
    fields = read_form_fields(options.fields, command.stdin, command.language)
    if os.path.getsize(options["file"]) == 0:
        command.complain(Text("warning: {path} is empty (0 bytes); sending it as --allow-empty asks.",
                              path=options["file"]))
    reactor, interruption = command.reactor, command.interruption
    started = reactor.seconds()
    progress = make_progress(reactor, command.stderr, command.language, quiet=options["quiet"])
    output = _LineEnd(command.stdout)
    d = send_file(
        reactor,
        options["file"],
        to=options.to,
        field=options.field,
        fields=fields,
        output=output,
        progress=progress.sent,
        **options.route(command.language),
    )
    interruption.watch(d)
    d.addBoth(lambda result: (progress.stop(), result)[1])

    def answered(reply: Reply) -> int:
        command.stdout.flush()
        took = reactor.seconds() - started
        details = dict(
            file=options["file"],
            size=readable_size(os.path.getsize(options["file"]), command.language),
            how=_how(options),
            # A small file's send takes hundredths: never "in 0.0 s".
            seconds=decimal(took, 1 if took >= 1 else 2, command.language),
            status=reply.status,
            reason=reply.reason,
        )
        if reply.ok:
            summary = Text("Sent {file} ({size}) {how} in {seconds} s: e-PMSI answered {status} {reason}.", **details)
        else:
            summary = Text(
                "Not accepted: {file} ({size}) went {how} in {seconds} s, but e-PMSI answered {status} {reason}.",
                **details,
            )
        if not output.at_line_start:
            command.stderr.write("\n")
        progress.answered(reply.answered_at)
        command.tell(summary)
        return EXIT_OK if reply.ok else EXIT_FAILED

    def failed(failure: Failure) -> int | Failure:
        if not failure.check(UploadFailed):
            return failure
        error: UploadFailed = failure.value
        if interruption.signal is not None:
            command.complain(
                Text("Interrupted ({signal}): the upload was stopped.", signal=interruption.describe())
            )
        else:
            command.complain(error.text)
        command.complain(error.outcome(options["file"]))
        if interruption.signal is not None:
            return exit_status_for_signal(interruption.signal)
        return EXIT_ANSWER_LOST if error.maybe_delivered else EXIT_FAILED

    return d.addCallbacks(answered, failed)


def test(command: Command, options: TestOptions) -> Deferred[int]:
    """C{epop test}: the manual's "Tester", step by step, saying which failed."""
    options.resolve(command.saved, command.environ)
    interruption = command.interruption
    d = test_connection(command.reactor, **options.route(command.language))
    interruption.watch(d)

    def interrupted(failure: Failure) -> int | Failure:
        if interruption.signal is None or not failure.check(CancelledError):
            return failure
        command.complain(
            Text("Interrupted ({signal}): the test was stopped.", signal=interruption.describe())
        )
        return exit_status_for_signal(interruption.signal)

    def reported(report: TestReport) -> int | Failure:
        if interruption.signal is not None and not report.ok:
            # A direct check reports its cancellation as a failed step.
            return interrupted(Failure(CancelledError()))
        if report.ok:
            command.say(report.describe(command.language))
            return EXIT_OK
        command.tell(Text("Test failed at this step: {step}.", step=report.step))
        command.tell(report.describe(command.language))
        return EXIT_FAILED

    return d.addCallbacks(reported, interrupted)
