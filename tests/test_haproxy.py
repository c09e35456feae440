"""
The documented HAProxy setup, run for real: C{docs/examples/haproxy.cfg} in
front of two in-process relays listening with C{haproxy:}.

The configuration is rendered from the example file itself, so the example
cannot drift from what is tested: its C{global} section (system paths,
chroot, user) is swapped for a test one that logs to stdout, its three
placeholder addresses for loopback ones, and C{inter 30s} for C{inter 1s} so
that health checks happen within the test.  One line is added:
C{source 127.0.0.2} in the backend, so that HAProxy's own connections to the
relays come from another address than the workstation (C{127.0.0.1}); a
relay that ignored the PROXY header would journal C{127.0.0.2}.

HAProxy runs in the foreground (C{haproxy -f CONFIG -db}) and is stopped in
each test's cleanup.  Without HAProxy these tests skip, unless
C{EPOP_REQUIRE_HAPROXY=1} (CI sets it) makes that a failure;
C{EPOP_HAPROXY_BINARY=PATH} chooses the binary (a missing path makes HAProxy
unavailable: handy to check skipping).
"""

from __future__ import annotations

import atexit
import json
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trustme
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from epop.workstation.client import RelayAddress, send_file, test_connection
from epop.epmsi.proxy import ProxyConfig
from epop.local_tls import ClientTLS, RelayTLS
from tests.programs import find_program
from tests.relaying import RunningRelay, exchange, start_relay
from tests.support import make_trustme_sandbox, poll_until, write_random_file

REQUIRE_VARIABLE = "EPOP_REQUIRE_HAPROXY"
BINARY_VARIABLE = "EPOP_HAPROXY_BINARY"

EXAMPLE = FilePath(__file__).parent().parent().descendant(["docs", "examples", "haproxy.cfg"])
BALANCER_PLACEHOLDER = "10.1.2.10:3358"
RELAY_PLACEHOLDERS = ("10.1.2.11:3358", "10.1.2.12:3358")
RELAY_NAMES = ("relay1", "relay2")
CHECK_INTERVAL = ("inter 30s", "inter 1s")
WORKSTATION = "127.0.0.1"
HAPROXY_SOURCE = "127.0.0.2"

TEST_GLOBAL = """\
global
    # Written by tests/test_haproxy.py: traffic and state changes on stdout.
    log stdout format raw local0
    maxconn 200
"""

_READY_TIMEOUT = 10.0
_READY_INTERVAL = 0.02
_STOP_TIMEOUT = 10.0
_KILL_TIMEOUT = 5.0
_START_ATTEMPTS = 3
_TAIL_CHARS = 3000

# One tcplog line per session, written when it ends (raw format):
#   127.0.0.1:54321 [25/Nov/2026:20:18:56.079] epop epop-relays/relay1 1/0/312 2097502 -- 1/1/0/0/0 0/0
_SESSION = re.compile(r"^(\d+\.\d+\.\d+\.\d+:\d+) \[[^\]]+\] \S+ [^/\s]+/(\S+) ")

_running: set[HAProxy] = set()


class HAProxyUnavailable(Exception):
    """No HAProxy binary."""


@dataclass(eq=False)
class HAProxy:
    """A running HAProxy started by L{start_haproxy}."""

    port: int
    config: FilePath
    output: FilePath
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def endpoint(self) -> RelayAddress:
        return RelayAddress(WORKSTATION, self.port)

    def log_lines(self) -> list[str]:
        try:
            content = self.output.getContent()
        except FileNotFoundError:
            return []
        return content.decode("utf-8", "replace").splitlines()

    def sessions(self) -> list[tuple[str, str]]:
        """(workstation address, server name) of each session that has ended."""
        found = []
        for line in self.log_lines():
            match = _SESSION.match(line)
            if match:
                found.append((match.group(1), match.group(2)))
        return found

    def log_tail(self) -> str:
        return "\n".join(self.log_lines())[-_TAIL_CHARS:] or "(empty)"

    def stop(self) -> None:
        """SIGTERM (HAProxy's hard stop), bounded wait, then SIGKILL.  Idempotent."""
        _running.discard(self)
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(_KILL_TIMEOUT)


@atexit.register
def _stop_leftovers() -> None:
    for haproxy in list(_running):
        haproxy.stop()


def _find_haproxy() -> str:
    configured = os.environ.get(BINARY_VARIABLE)
    if configured:
        if os.path.isfile(configured) and os.access(configured, os.X_OK):
            return configured
        raise HAProxyUnavailable(f"{configured} ({BINARY_VARIABLE}) not found")
    found = find_program("haproxy")
    if found is None:
        raise HAProxyUnavailable("haproxy not found")
    return found


def haproxy_binary(testcase: SynchronousTestCase) -> str:
    """The HAProxy binary, or skip (fail with C{EPOP_REQUIRE_HAPROXY=1})."""
    try:
        return _find_haproxy()
    except HAProxyUnavailable as error:
        if os.environ.get(REQUIRE_VARIABLE) == "1":
            raise testcase.failureException(
                f"haproxy is required ({REQUIRE_VARIABLE}=1) but {error}: "
                "apt-get install haproxy"
            ) from None
        raise SkipTest(
            f"haproxy not installed ({error}): apt-get install haproxy "
            "(the tests of docs/examples/haproxy.cfg are skipped)"
        ) from None


def render_example(text: str, frontend_port: int, relay_ports: tuple[int, int]) -> str:
    """
    The example configuration with loopback addresses, the test's global
    section, 1 s health checks and C{source 127.0.0.2}.  Fails if the
    example lost a placeholder, so a changed example is noticed here.
    """
    substitutions = [(BALANCER_PLACEHOLDER, f"{WORKSTATION}:{frontend_port}"), CHECK_INTERVAL]
    substitutions += [
        (placeholder, f"127.0.0.1:{port}")
        for placeholder, port in zip(RELAY_PLACEHOLDERS, relay_ports, strict=True)
    ]
    # Directives only: comments (which name the placeholders too) are dropped.
    directives = "\n".join(
        line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
    )
    for old, _ in substitutions:
        if directives.count(old) != 1:
            raise ValueError(
                f"{EXAMPLE.path}: expected {old!r} exactly once outside comments, "
                f"found {directives.count(old)}"
            )
    for old, new in substitutions:
        directives = directives.replace(old, new)
    head, separator, rest = directives.partition("\ndefaults\n")
    if not separator or not re.search(r"^global$", head, re.MULTILINE):
        raise ValueError(f"{EXAMPLE.path}: expected a global section, then defaults")
    lines = []
    for line in ("defaults\n" + rest).splitlines():
        lines.append(line)
        if line.startswith("backend "):
            lines.append(f"    source {HAPROXY_SOURCE}")
    if not any(line.strip() == f"source {HAPROXY_SOURCE}" for line in lines):
        raise ValueError(f"{EXAMPLE.path}: no backend section")
    return TEST_GLOBAL + "\n" + "\n".join(lines) + "\n"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((WORKSTATION, 0))
        return int(probe.getsockname()[1])


def _listening(port: int) -> bool:
    """
    Whether something listens on 127.0.0.1:PORT, read from /proc/net/tcp:
    connecting to find out would open a session to a relay, which journals it.
    """
    wanted = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/tcp") as table:
            rows = table.read().splitlines()[1:]
    except OSError:
        try:
            socket.create_connection((WORKSTATION, port), timeout=1).close()
        except OSError:
            return False
        return True
    return any(row.split()[1] == wanted and row.split()[3] == "0A" for row in rows)


def start_haproxy(testcase: TestCase, relay_ports: tuple[int, int]) -> HAProxy:
    """
    Start HAProxy on the rendered example, in front of C{relay_ports}, and
    stop it in a cleanup.  Blocking: returns once it listens (bounded).
    """
    binary = haproxy_binary(testcase)
    directory = FilePath(testcase.mktemp())
    directory.makedirs()
    config = directory.child("haproxy.cfg")
    output = directory.child("haproxy.out")
    failures = []
    for attempt in range(1, _START_ATTEMPTS + 1):
        port = _free_port()
        config.setContent(render_example(EXAMPLE.getContent().decode("utf-8"), port, relay_ports).encode())
        with open(output.path, "wb") as out:
            process = subprocess.Popen(
                [binary, "-f", config.path, "-db"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=directory.path,
                close_fds=True,
            )
        haproxy = HAProxy(port, config, output, process)
        _running.add(haproxy)
        deadline = time.monotonic() + _READY_TIMEOUT
        while process.poll() is None and not _listening(port) and time.monotonic() < deadline:
            time.sleep(_READY_INTERVAL)
        if process.poll() is None and _listening(port):
            testcase.addCleanup(haproxy.stop)
            return haproxy
        status = process.poll()
        haproxy.stop()
        problem = (
            f"exited with status {status}" if status is not None
            else f"did not listen on 127.0.0.1:{port} within {_READY_TIMEOUT:g} s"
        )
        failures.append(f"attempt {attempt} (port {port}): {problem}\n{haproxy.log_tail()}")
        if "Address already in use" not in haproxy.log_tail():
            break
    raise testcase.failureException(
        f"could not start {binary} -f {config.path} -db:\n" + "\n".join(failures)
    )


def _host(client: str) -> str:
    return client.rsplit(":", 1)[0]


def _checked_by_haproxy(relay: RunningRelay) -> bool:
    """Whether a health check (a connection from HAProxy's own address) has ended."""
    return any(_host(r["client"]) == HAPROXY_SOURCE for r in relay.records("connection-closed"))


class ExampleFileTests(SynchronousTestCase):
    def test_example_is_valid_as_installed(self) -> None:
        """The example, unmodified (production global section included), passes haproxy -c."""
        result = subprocess.run(
            [haproxy_binary(self), "-c", "-f", EXAMPLE.path],
            check=False, capture_output=True, timeout=30, stdin=subprocess.DEVNULL,
        )
        self.assertEqual(result.returncode, 0, (result.stdout + result.stderr).decode("utf-8", "replace"))

    def test_rendering(self) -> None:
        """The rendering changes only the global section, the addresses and the check interval."""
        example = EXAMPLE.getContent().decode("utf-8")
        rendered = render_example(example, 5000, (5001, 5002))
        for line in ("bind 127.0.0.1:5000", "server relay1 127.0.0.1:5001",
                     "server relay2 127.0.0.1:5002", "source 127.0.0.2", "inter 1s",
                     "mode tcp", "balance leastconn", "timeout client 1h", "timeout server 1h"):
            self.assertIn(line, rendered)
        self.assertIn("send-proxy-v2 check", rendered)
        for production in ("chroot", "/run/haproxy", "10.1.2."):
            self.assertNotIn(production, rendered)
        self.assertRaises(ValueError, render_example, example.replace(RELAY_PLACEHOLDERS[1], "x"), 1, (2, 3))

    def test_documented_excerpt_matches_example(self) -> None:
        """Every line of the configuration quoted in docs/haproxy.md is a line of the example."""
        document = EXAMPLE.parent().sibling("haproxy.md").getContent().decode("utf-8")
        blocks = re.findall(r"^```haproxy\n(.*?)^```", document, re.MULTILINE | re.DOTALL)
        self.assertTrue(blocks, "docs/haproxy.md quotes no ```haproxy block")
        example = {line.strip() for line in EXAMPLE.getContent().decode("utf-8").splitlines()}
        for block in blocks:
            for line in block.splitlines():
                if line.strip():
                    self.assertIn(line.strip(), example, "docs/haproxy.md quotes a line the example lacks")


class HAProxyTests(TestCase):
    """The example configuration in front of two relays, over loopback."""

    def setUp(self) -> None:
        self.sandbox = make_trustme_sandbox(self, reactor)

    def start(self, **settings: Any) -> tuple[HAProxy, list[RunningRelay]]:
        haproxy_binary(self)  # skip before starting anything
        relays = [
            start_relay(
                self, reactor, self.sandbox.url, self.sandbox.ca_path,
                listen=("haproxy:tcp:0:interface=127.0.0.1",), **settings,
            )
            for _ in RELAY_NAMES
        ]
        haproxy = start_haproxy(self, (relays[0].port, relays[1].port))
        return haproxy, relays

    async def send(self, haproxy: HAProxy, count: int, seed: int, **options: Any) -> None:
        """Send C{count} files at once through HAProxy; each arrives intact."""
        paths, digests = [], []
        for index in range(count):
            path = self.mktemp()
            digests.append(write_random_file(path, (1 + index % 3) * 1024 * 1024, seed=seed + index))
            paths.append(path)
        replies = await gatherResults(
            [send_file(reactor, path, to="/syriusUpload.do", relay=haproxy.endpoint, **options)
             for path in paths],
            consumeErrors=True,
        )
        for reply, digest in zip(replies, digests, strict=True):
            self.assertEqual(reply.status, 200)
            self.assertEqual(json.loads(reply.body)["files"][0]["sha256"], digest)

    def completed_uploads(self, relay: RunningRelay) -> list[dict[str, Any]]:
        return [
            r for r in relay.records("object-released")
            if r["kind"] == "upload" and r["outcome"] == "completed"
        ]

    async def wait_sessions(self, haproxy: HAProxy, count: int) -> None:
        ended = await poll_until(reactor, lambda: len(haproxy.sessions()) >= count, attempts=200)
        self.assertTrue(ended, haproxy.log_tail())

    def assert_checks_only(self, relay: RunningRelay) -> None:
        """HAProxy's own connections (health checks) carry no operation and were not refused."""
        checks = {
            r["connection"] for r in relay.records("connection-opened")
            if _host(r["client"]) == HAPROXY_SOURCE
        }
        for record in relay.journal.records:
            if record.get("connection") in checks:
                self.assertIn(record["type"], ("connection-opened", "connection-closed"), record)
                if record["type"] == "connection-closed":
                    self.assertEqual((record["reason"], record["bytes_in"]), ("closed-by-client", 0), record)

    async def test_uploads_spread_with_workstation_addresses(self) -> None:
        """Uploads through the example reach both relays intact, each journaled with the workstation's own address and port."""
        # Only the workstation may connect: HAProxy's 127.0.0.2 would be refused.
        haproxy, relays = self.start(allow=(f"{WORKSTATION}/32",))
        await self.send(haproxy, 6, seed=40)
        self.assertEqual(len(self.sandbox.complete_files()), 6)
        await self.wait_sessions(haproxy, 6)
        sessions = haproxy.sessions()
        self.assertEqual(len(sessions), 6, haproxy.log_tail())
        for name, relay in zip(RELAY_NAMES, relays, strict=True):
            uploads = self.completed_uploads(relay)
            self.assertGreaterEqual(len(uploads), 1, f"{name} got no upload: {sessions}")
            # The address HAProxy saw the workstation come from, port included.
            self.assertEqual(
                sorted(r["client"] for r in uploads),
                sorted(client for client, server in sessions if server == name),
            )
            self.assertEqual({_host(r["client"]) for r in uploads}, {WORKSTATION})
            for record in relay.records("connection-opened"):
                self.assertIn(_host(record["client"]), (WORKSTATION, HAPROXY_SOURCE), record)
            self.assert_checks_only(relay)
        self.assertEqual(sum(len(self.completed_uploads(r)) for r in relays), 6)

    async def test_refused_workstation_is_named(self) -> None:
        """Relays that do not list the workstation refuse it through HAProxy, naming its own address; health checks are not refused."""
        haproxy, relays = self.start(allow=("10.0.0.0/8",))
        report = await test_connection(reactor, relay=haproxy.endpoint)
        assert report.error is not None, report.describe()
        self.assertEqual((report.failed_step, report.error.code), ("relay", "not-authorized"))
        match = re.fullmatch(
            r"Client (127\.0\.0\.1:\d+) is not allowed to connect to this e-POP relay",
            report.error.message,
        )
        assert match is not None, report.error.message
        client = match.group(1)
        await self.wait_sessions(haproxy, 1)
        [(seen, server)] = haproxy.sessions()
        self.assertEqual(seen, client)
        relay = relays[RELAY_NAMES.index(server)]
        closed = [r for r in relay.records("connection-closed") if r["client"] == client]
        self.assertEqual([r["reason"] for r in closed], ["not-authorized"])
        # HAProxy's checks (every second here) reach both relays and pass.
        for each in relays:
            checked = await poll_until(reactor, partial(_checked_by_haproxy, each), attempts=100)
            self.assertTrue(checked, each.journal.records)
            self.assert_checks_only(each)
        self.assertFalse([line for line in haproxy.log_lines() if " is DOWN" in line], haproxy.log_tail())

    async def test_tunnel_through_haproxy(self) -> None:
        """HTTPS tunnels pass HAProxy too: the allowlist sees the workstation's own address, as for e-POP."""
        haproxy, relays = self.start(allow=(f"{WORKSTATION}/32",))
        path = self.mktemp()
        digest = write_random_file(path, 256 * 1024, seed=60)
        reply = await send_file(
            reactor, path, to="/syriusUpload.do", field="theFile",
            epmsi=self.sandbox.url, ca_file=self.sandbox.ca_path,
            proxy=ProxyConfig(WORKSTATION, haproxy.port),
        )
        self.assertEqual(json.loads(reply.body)["files"][0]["sha256"], digest)
        tunnels = [r for relay in relays for r in relay.records("object-instantiated") if r["kind"] == "tunnel"]
        self.assertEqual(len(tunnels), 1)
        self.assertEqual(_host(tunnels[0]["client"]), WORKSTATION)

    async def test_tunnel_refused_names_the_workstation(self) -> None:
        """A workstation outside the allowlist asking for a tunnel through HAProxy gets 403 naming its own address."""
        haproxy, relays = self.start(allow=("10.0.0.0/8",))
        answer = await exchange(
            reactor, haproxy.port, b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nAccept-Language: fr\r\n\r\n"
        )
        self.assertTrue(answer.startswith(b"HTTP/1.1 403 "), answer)
        self.assertRegex(
            answer.decode("utf-8"), r"Le client 127\.0\.0\.1:\d+ n'est pas autoris"
        )
        self.assertEqual(self.sandbox.complete_files(), [])


    async def test_stopped_relay_is_avoided(self) -> None:
        """With one relay stopped, HAProxy gives every workstation to the other (retries, redispatch, checks)."""
        haproxy, relays = self.start(allow=(f"{WORKSTATION}/32",))
        await relays[1].service.stopService()
        await self.send(haproxy, 4, seed=50)
        self.assertEqual(len(self.completed_uploads(relays[0])), 4)
        self.assertEqual(self.completed_uploads(relays[1]), [])
        await self.wait_sessions(haproxy, 4)
        self.assertEqual({server for _, server in haproxy.sessions()}, {RELAY_NAMES[0]}, haproxy.log_tail())

    async def test_encrypted_local_hop_passes_through(self) -> None:
        """A workstation's TLS session crosses HAProxy unchanged to relays that require TLS; they journal its address."""
        ca = trustme.CA()
        issued = ca.issue_cert(WORKSTATION, "localhost")
        files = {}
        for name, data in [("ca", ca.cert_pem.bytes()), ("cert", issued.cert_chain_pems[0].bytes()),
                           ("key", issued.private_key_pem.bytes())]:
            files[name] = self.mktemp()
            FilePath(files[name]).setContent(data)
        haproxy, relays = self.start(
            allow=(f"{WORKSTATION}/32",), tls=RelayTLS(files["cert"], files["key"], require=True)
        )
        await self.send(haproxy, 2, seed=60, tls=ClientTLS(relay_ca=files["ca"]))
        await self.wait_sessions(haproxy, 2)
        clients = sorted(r["client"] for relay in relays for r in self.completed_uploads(relay))
        self.assertEqual(clients, sorted(client for client, _ in haproxy.sessions()))
        self.assertEqual({_host(client) for client in clients}, {WORKSTATION})
        plain = await test_connection(reactor, relay=haproxy.endpoint)
        assert plain.error is not None, plain.describe()
        self.assertEqual(plain.error.code, "tls-required")


class DirectToHAProxyListenerTests(TestCase):
    """What a workstation that skips the balancer gets (no HAProxy needed)."""

    async def test_direct_connection_is_told_to_use_the_balancer(self) -> None:
        """Without a PROXY header a haproxy: listener answers no-proxy-header and closes; a second tcp: listener keeps direct access."""
        sandbox = make_trustme_sandbox(self, reactor)
        relay = start_relay(
            self, reactor, sandbox.url, sandbox.ca_path,
            listen=("haproxy:tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1"),
            allow=("127.0.0.0/8",),
        )
        report = await test_connection(reactor, relay=relay.endpoint)
        assert report.error is not None, report.describe()
        self.assertEqual((report.failed_step, report.error.code), ("relay", "no-proxy-header"))
        self.assertIn("load balancer", report.error.message)
        self.assertTrue(await poll_until(reactor, lambda: "connection-closed" in relay.types()))
        [opened] = relay.records("connection-opened")
        [closed] = relay.records("connection-closed")
        self.assertEqual(_host(opened["client"]), WORKSTATION)  # the socket's peer: no header
        self.assertEqual(closed["reason"], "no-proxy-header")
        self.assertGreater(closed["bytes_in"], 0)
        self.assertGreater(closed["bytes_out"], 0)
        self.assertNotIn("object-instantiated", relay.types())
        port = relay.service.listeners[1].port
        assert port is not None
        direct = await test_connection(reactor, relay=RelayAddress(WORKSTATION, port.getHost().port))
        self.assertTrue(direct.ok, direct.describe())
