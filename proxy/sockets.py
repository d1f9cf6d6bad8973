"""Per-connection socket set-up shared by every listener and upstream connection, and what
the network namespace offers (whether there is IPv6 to listen on and to capture)."""

from __future__ import annotations

import asyncio
import socket

__all__ = ["global_ipv6_present", "has_global_ipv6", "tune_transport"]

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


def has_global_ipv6(if_inet6: str) -> bool:
    """Whether `/proc/net/if_inet6` text lists a global-scope address (scope field `00`):
    only then does the namespace carry IPv6 traffic worth capturing and listening for."""
    for line in if_inet6.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[3] == "00":
            return True
    return False


def global_ipv6_present(path: str = "/proc/net/if_inet6") -> bool:
    try:
        with open(path) as fh:
            return has_global_ipv6(fh.read())
    except OSError:  # IPv6 disabled in the kernel: no such file
        return False
