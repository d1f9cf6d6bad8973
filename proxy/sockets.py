"""Per-connection socket set-up shared by every listener and upstream connection."""

from __future__ import annotations

import asyncio
import socket

__all__ = ["tune_transport"]

WRITE_HIGH_WATER = 64 * 1024  # above this, pause_writing() fires and backpressure starts


def tune_transport(transport: asyncio.Transport) -> bytes:
    """Disable Nagle (a proxy forwards small heads that must not wait for an ACK), set the
    write-buffer high-water mark, and return the peer's address (b"" when unknown)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not TCP (a test's socketpair) or already closed
    transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
    peer = transport.get_extra_info("peername")
    return str(peer[0]).encode() if peer else b""
