"""
Self-test of L{tests.squid}: the squid it starts really authenticates,
tunnels, filters destinations, logs, and goes away when stopped.

The destinations are plain listening sockets: the kernel completes the TCP
handshake for squid from the backlog, so these blocking tests never need
the reactor to accept.
"""

from __future__ import annotations

import os
import socket
import time

from twisted.trial.unittest import SkipTest, TestCase

from tests.squid import (
    BINARY_VARIABLE,
    REQUIRE_VARIABLE,
    Squid,
    _pids_mentioning,
    proxy_connect,
    start_squid,
)

_POLL_TIMEOUT = 5.0
_POLL_INTERVAL = 0.05


def _wait_for(predicate, timeout: float = _POLL_TIMEOUT) -> bool:
    """Check C{predicate} until true or C{timeout} seconds have passed."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return predicate()
        time.sleep(_POLL_INTERVAL)
    return True


def _header(head: bytes, name: bytes) -> list[bytes]:
    """The values of header C{name} (case-insensitive) in a response head."""
    values = []
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower():
            values.append(value.strip())
    return values


class SquidHarnessTests(TestCase):
    """A real squid, started and stopped by the test."""

    def listener(self) -> socket.socket:
        """A listening socket on 127.0.0.1, closed after the test."""
        listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(listening.close)
        listening.bind(("127.0.0.1", 0))
        listening.listen(8)
        return listening

    def assertNothingAccepted(self, listening: socket.socket) -> None:
        """Squid did not open a connection to C{listening}."""
        listening.setblocking(False)
        try:
            connection, _ = listening.accept()
        except BlockingIOError:
            return
        connection.close()
        self.fail("squid connected to a destination it should have refused")

    def start(self, allowed: socket.socket) -> Squid:
        """A squid allowing only C{allowed}'s port."""
        return start_squid(self, allow_ports=[allowed.getsockname()[1]])

    def test_tunnel_with_credentials(self) -> None:
        """Valid credentials to an allowed port: 200, a real tunnel, and a logged CONNECT."""
        destination = self.listener()
        port = destination.getsockname()[1]
        squid = self.start(destination)
        self.assertEqual(squid.url, f"http://127.0.0.1:{squid.port}")
        self.assertEqual(squid.access_lines(), [])

        status, head = proxy_connect(
            squid, "127.0.0.1", port, squid.user, squid.password
        )

        self.assertEqual(status, 200, head)
        destination.settimeout(5)
        tunnelled, _ = destination.accept()
        tunnelled.close()
        expected = f"CONNECT 127.0.0.1:{port} {squid.user} "

        def logged() -> bool:
            return any(expected in line for line in squid.access_lines())

        self.assertTrue(_wait_for(logged), (squid.access_lines(), squid.log_tail()))
        [line] = [line for line in squid.access_lines() if expected in line]
        self.assertIn(" TCP_TUNNEL/200 ", line)

    def test_no_credentials(self) -> None:
        """No credentials: 407 with a Basic challenge, and no connection made."""
        destination = self.listener()
        squid = self.start(destination)

        status, head = proxy_connect(squid, "127.0.0.1", destination.getsockname()[1])

        self.assertEqual(status, 407, head)
        challenges = _header(head, b"Proxy-Authenticate")
        self.assertEqual(challenges, [b'Basic realm="epop-test"'], head)
        self.assertNothingAccepted(destination)

    def test_wrong_password(self) -> None:
        """A valid user with a wrong password: 407, and no connection made."""
        destination = self.listener()
        squid = self.start(destination)
        port = destination.getsockname()[1]

        status, head = proxy_connect(
            squid, "127.0.0.1", port, squid.user, "not-" + squid.password
        )

        self.assertEqual(status, 407, head)
        self.assertNothingAccepted(destination)
        # The same user with the right password still gets through.
        status, head = proxy_connect(
            squid, "127.0.0.1", port, squid.user, squid.password
        )
        self.assertEqual(status, 200, head)

    def test_forbidden_port(self) -> None:
        """A forbidden port gets 403 with valid credentials, even if also allowed."""
        allowed = self.listener()
        forbidden = self.listener()
        forbidden_port = forbidden.getsockname()[1]
        # Listed in both: only the explicit deny can refuse it.
        squid = start_squid(
            self,
            allow_ports=[allowed.getsockname()[1], forbidden_port],
            forbid_ports=[forbidden_port],
        )

        status, head = proxy_connect(
            squid, "127.0.0.1", forbidden_port, squid.user, squid.password
        )

        self.assertEqual(status, 403, head)
        self.assertEqual(
            _header(head, b"X-Squid-Error"), [b"ERR_ACCESS_DENIED 0"], head
        )
        self.assertNothingAccepted(forbidden)

    def test_only_allowed_destinations(self) -> None:
        """Ports not allowed and hosts other than 127.0.0.1 get 403 too."""
        allowed = self.listener()
        other = self.listener()
        squid = self.start(allowed)

        unlisted, head = proxy_connect(
            squid, "127.0.0.1", other.getsockname()[1], squid.user, squid.password
        )
        other_host, other_head = proxy_connect(
            squid, "127.0.0.2", allowed.getsockname()[1], squid.user, squid.password
        )

        self.assertEqual(unlisted, 403, head)
        self.assertEqual(other_host, 403, other_head)
        self.assertNothingAccepted(other)
        self.assertNothingAccepted(allowed)

    def test_stop(self) -> None:
        """After stop() (idempotent) the port refuses and no squid or helper process is left."""
        destination = self.listener()
        squid = self.start(destination)
        mine = squid.directory
        # Found while running: the check below cannot pass by finding nothing.
        self.assertNotEqual(_pids_mentioning(mine), [])

        squid.stop()
        squid.stop()

        self.assertIsNotNone(squid.process.returncode)
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection((squid.host, squid.port), timeout=5).close()
        self.assertTrue(
            _wait_for(lambda: not _pids_mentioning(mine)), _pids_mentioning(mine)
        )


class SquidAvailabilityTests(TestCase):
    """What a test gets when squid is missing (simulated with EPOP_SQUID_BINARY)."""

    def setEnvironment(self, name: str, value: str | None) -> None:
        """Set (or unset, for None) an environment variable for this test."""
        previous = os.environ.get(name)
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value

        def restore() -> None:
            if previous is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = previous

        self.addCleanup(restore)

    def test_missing_squid_skips(self) -> None:
        """Without EPOP_REQUIRE_SQUID=1, a missing squid skips the test."""
        self.setEnvironment(BINARY_VARIABLE, "/nonexistent/squid")
        self.setEnvironment(REQUIRE_VARIABLE, None)
        with self.assertRaises(SkipTest) as caught:
            start_squid(self, allow_ports=[443])
        self.assertIn("apt-get install squid", str(caught.exception))

    def test_missing_squid_fails_when_required(self) -> None:
        """With EPOP_REQUIRE_SQUID=1, a missing squid fails the test."""
        self.setEnvironment(BINARY_VARIABLE, "/nonexistent/squid")
        self.setEnvironment(REQUIRE_VARIABLE, "1")
        with self.assertRaises(self.failureException) as caught:
            start_squid(self, allow_ports=[443])
        self.assertIn("squid is required (EPOP_REQUIRE_SQUID=1)", str(caught.exception))
        self.assertIn("/nonexistent/squid", str(caught.exception))
