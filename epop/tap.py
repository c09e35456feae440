"""
C{twistd epop}: options in, a relay service out.

Options are checked at parse time so that a mistake is a usage error that
names the option; L{makeService} only builds objects.
"""

from __future__ import annotations

import os

from twisted.application.service import IService, MultiService
from twisted.logger import Logger
from twisted.python import usage

from epop.allowlist import Allowlist
from epop.local_tls import RelayTLS
from epop.proxy import (
    PASSWORD_VARIABLE,
    SYSTEM,
    ProxyConfig,
    load_proxy_password,
    resolve_proxy,
)
from epop.service import DEFAULT_LISTEN, ListenError, RelaySettings, make_relay_service
from epop.upstream import DEFAULT_EPMSI_URL, EpmsiOrigin, trust_root_from_pem


class Options(usage.Options):
    log = Logger()

    synopsis = "[options]"
    longdesc = (
        "Run an e-POP relay: workstations without Internet access send their "
        "PMSI files to it, and it forwards them to e-PMSI over HTTPS."
    )
    optParameters = [
        ["epmsi", None, DEFAULT_EPMSI_URL, "e-PMSI's HTTPS origin."],
        ["ca-file", None, None, "PEM file of CA certificates trusted for e-PMSI (default: the system's)."],
        ["journal", None, "epop-journal.jsonl", "Path of the journal (JSON lines)."],
        ["idle-timeout", None, 120.0, "Seconds of silence from a workstation before its connection is closed.", float],
        ["epmsi-timeout", None, 300.0, "Seconds an operation may make no progress while waiting on e-PMSI before it is cancelled.", float],
        ["connect-timeout", None, 30.0, "Seconds to connect to e-PMSI.", float],
        ["proxy", None, None, "HTTP proxy to reach e-PMSI through: http://HOST:PORT, or 'system' for this machine's settings."],
        ["proxy-user", None, None, "User name for the proxy (Basic authentication)."],
        ["proxy-password-file", None, None, f"File whose first line is the proxy password (or set {PASSWORD_VARIABLE}; never on the command line)."],
        ["tls-cert", None, None, "PEM certificate of the relay: workstations may then encrypt the local hop (same port)."],
        ["tls-key", None, None, "PEM private key of --tls-cert."],
        ["tls-chain", None, None, "PEM intermediate certificates sent with --tls-cert."],
        ["tls-client-ca", None, None, "Require workstations to present a certificate signed by this PEM CA (mutual TLS)."],
    ]
    optFlags = [
        ["no-check", None, "Do not check at start-up that e-PMSI can be reached."],
        ["require-tls", None, "Refuse unencrypted sessions (needs --tls-cert)."],
    ]
    compData = usage.Completions(
        optActions={"ca-file": usage.CompleteFiles("*.pem"), "journal": usage.CompleteFiles()}
    )

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["allow"] = []
        self.proxy: ProxyConfig | None = None

    def opt_listen(self, description: str) -> None:
        """Endpoint to listen on, e.g. tcp:3358:interface=192.168.1.10 (repeatable; default tcp:3358)."""
        self["listen"].append(description)

    def opt_allow(self, entry: str) -> None:
        """Only this client address or network may connect, e.g. 10.1.2.3 or 10.1.0.0/16 (repeatable; default: everyone)."""
        try:
            Allowlist([entry])
        except ValueError as e:
            raise usage.UsageError(f"--allow: {e}") from None
        self["allow"].append(entry)

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        from twisted.internet import reactor
        from twisted.internet.endpoints import serverFromString

        for description in self["listen"]:
            try:
                serverFromString(reactor, description)
            except (ValueError, TypeError, KeyError) as e:
                raise usage.UsageError(f"--listen {description}: invalid endpoint ({e})") from None
        try:
            EpmsiOrigin.from_url(self["epmsi"])
            if self["ca-file"]:
                trust_root_from_pem(self["ca-file"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        for name in ("idle-timeout", "epmsi-timeout", "connect-timeout"):
            if self[name] <= 0:
                raise usage.UsageError(f"--{name} must be a positive number of seconds")
        try:
            password = load_proxy_password(self["proxy-password-file"])
            self.proxy, source = resolve_proxy(
                self["proxy"], self["epmsi"], user=self["proxy-user"], password=password
            )
        except ValueError as e:
            raise usage.UsageError(f"--proxy: {e}") from None
        if self["proxy"] == SYSTEM:
            self.log.info(
                "--proxy system: {found}",
                found=f"{self.proxy.url} ({source})" if self.proxy else source,
            )
        self.tls = self._tls()
        folder = os.path.dirname(os.path.abspath(self["journal"]))
        if not os.access(folder, os.W_OK):
            raise usage.UsageError(f"--journal {self['journal']}: cannot write in {folder}")

    def _tls(self) -> RelayTLS | None:
        if not self["tls-cert"]:
            for name in ("tls-key", "tls-chain", "tls-client-ca"):
                if self[name]:
                    raise usage.UsageError(f"--{name} needs --tls-cert")
            if self["require-tls"]:
                raise usage.UsageError("--require-tls needs --tls-cert and --tls-key")
            return None
        if not self["tls-key"]:
            raise usage.UsageError("--tls-cert needs --tls-key")
        tls = RelayTLS(
            self["tls-cert"],
            self["tls-key"],
            self["tls-chain"],
            self["tls-client-ca"],
            self["require-tls"],
        )
        try:
            tls.options()
        except ValueError as e:
            raise usage.UsageError(f"--tls-cert: {e}") from None
        return tls

    def settings(self) -> RelaySettings:
        return RelaySettings(
            listen=tuple(self["listen"]),
            epmsi=self["epmsi"],
            ca_file=self["ca-file"],
            journal=self["journal"],
            allow=tuple(self["allow"]),
            idle_timeout=self["idle-timeout"],
            epmsi_timeout=self["epmsi-timeout"],
            connect_timeout=self["connect-timeout"],
            proxy=self.proxy,
            tls=self.tls,
            check_at_start=not self["no-check"],
        )


class _TwistdRelay(MultiService):
    """
    Under twistd, a port that cannot be bound ends the program with one
    clear line instead of a traceback.
    """

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except ListenError as e:
            raise SystemExit(f"epop: {e}") from None


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    top = _TwistdRelay()
    make_relay_service(reactor, options.settings()).setServiceParent(top)
    return top
