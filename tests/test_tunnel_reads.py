"""
An open tunnel reads and sends in large pieces, over real loopback sockets:
a tunnel copies bytes, and the relay's cost per GiB is per read and per
send (a reactor turn and its system calls each), not per byte.  The
benchmark's row h measures it (docs/performance.md); this checks the setting
itself, never a speed.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.abstract import FileDescriptor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase

from epop.relay.http_proxy import HttpProxySession
from epop.tuning import MIN_READ_SIZE, READ_SIZE, SEND_LIMIT
from tests.relaying import start_relay
from tests.support import SilentServer, poll_until


def socket_of(transport: Any) -> FileDescriptor:
    """The socket's transport under any wrappers (allowlist, limits, first byte)."""
    for _ in range(8):
        if isinstance(transport, FileDescriptor):
            return transport
        transport = getattr(transport, "transport", None)
    raise AssertionError("no socket under the transport")


class _Answer(Protocol):
    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class TunnelReadSizeTests(TestCase):
    async def test_open_tunnel_reads_and_sends_large_pieces(self) -> None:
        """
        Until its CONNECT is answered, a connection reads small pieces, as
        every new connection does; once spliced, both sides read
        READ_SIZE and send up to SEND_LIMIT at a time.
        """
        far = SilentServer(self, reactor)
        relay = start_relay(
            self, reactor, "https://127.0.0.1:9", None, tunnel_to=(f"127.0.0.1:{far.port}",)
        )
        client = _Answer()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", relay.port), client)
        self.addCleanup(lambda: client.transport.abortConnection())
        client.transport.write(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n" % far.port)
        self.assertTrue(await poll_until(reactor, lambda: bool(relay.service.factory.connections)))
        [session] = relay.service.factory.connections.values()
        assert isinstance(session, HttpProxySession)
        # The head is not complete yet: still a new connection's small reads.
        self.assertEqual(socket_of(session.transport).bufferSize, MIN_READ_SIZE)

        client.transport.write(b"\r\n")
        self.assertTrue(await poll_until(reactor, lambda: b"\r\n\r\n" in client.received))
        self.assertTrue(client.received.startswith(b"HTTP/1.1 200 "), client.received)
        self.assertEqual(len(far.accepted), 1)
        assert session._far is not None
        for side in (socket_of(session.transport), socket_of(session._far.transport)):
            self.assertEqual((side.bufferSize, side.SEND_LIMIT), (READ_SIZE, SEND_LIMIT))
