"""Where a redirected connection was going: `SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`.

A nat REDIRECT rewrites the destination of a connection's packets to the listener; conntrack
remembers the original, and these socket options read it back (Linux, IPv4 and IPv6; the
value is a `sockaddr_in` / `sockaddr_in6`). A connection that was not redirected has no
original destination (ENOENT) or reports the listener's own address: both mean "not captured".
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, NamedTuple

__all__ = ["Address", "captured_destination", "original_destination", "parse_sockaddr"]

SO_ORIGINAL_DST = 80  # <linux/netfilter_ipv4.h>
IP6T_SO_ORIGINAL_DST = 80  # <linux/netfilter_ipv6/ip6_tables.h>
_SOCKADDR_IN6_LEN = 28


class Address(NamedTuple):
    host: str  # textual IP (no brackets)
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_sockaddr(raw: bytes) -> Address:
    """A kernel `sockaddr_in` or `sockaddr_in6` (family in host order, port in network order)."""
    if len(raw) < 8:
        raise ValueError(f"sockaddr of {len(raw)} bytes is too short")
    family = int.from_bytes(raw[:2], "little")
    port = int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET:
        return Address(str(ipaddress.IPv4Address(raw[4:8])), port)
    if family == socket.AF_INET6:
        if len(raw) < 24:
            raise ValueError(f"sockaddr_in6 of {len(raw)} bytes is too short")
        return Address(str(ipaddress.IPv6Address(raw[8:24])), port)
    raise ValueError(f"sockaddr of address family {family}")


def original_destination(sock: Any) -> Address | None:
    """The original destination of an accepted TCP socket, or None when conntrack has none.

    `sock` is a socket or the socket-like object a transport exposes (uvloop's has
    `getsockopt` too)."""
    family = sock.family
    try:
        if family == socket.AF_INET:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        elif family == socket.AF_INET6:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, _SOCKADDR_IN6_LEN)
        else:
            return None
    except OSError:
        return None  # ENOENT: no conntrack entry (not redirected) or no netfilter at all
    try:
        return parse_sockaddr(raw)
    except ValueError:
        return None


def captured_destination(sock: Any) -> Address | None:
    """The original destination when the connection was redirected to us, else None."""
    original = original_destination(sock)
    if original is None:
        return None
    local = sock.getsockname()
    if original.port == local[1] and ipaddress.ip_address(original.host) == ipaddress.ip_address(
        local[0]
    ):
        return None  # a direct connection to the listener (tracked, but not redirected)
    return original
