"""Who owns the other end of a local TCP connection: the loop guard's evidence.

The capture rules exclude the sidecar's traffic by UID. If that UID is wrong (the rules say
1337, the sidecar runs as someone else), every upstream connection the sidecar opens would be
captured again, reach its own outbound listener, be relayed or routed again, and so on until
file descriptors run out. So the outbound listener asks the kernel (`sock_diag`, the netlink
interface `ss` uses; no privilege needed) who owns the client socket of a captured
connection: if it is the sidecar's own UID, the connection is ours come back, and is refused.

The lookup is exact (one socket by its four-tuple), one request and one answer on a netlink
socket per captured connection; the kernel answers within the send call.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
import struct

__all__ = ["SockDiag", "build_request", "parse_owner"]

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
_ALL_STATES = 0xFFFFFFFF
_NO_COOKIE = 0xFFFFFFFF
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_REQUEST = struct.Struct("=BBBBI")  # inet_diag_req_v2 head: family, protocol, ext, pad, states
_SOCKID = struct.Struct(">HH16s16s")  # sport, dport (network order), src, dst
_SOCKID_TAIL = struct.Struct("=III")  # if, cookie[2]
_UID_OFFSET = _HEADER.size + 4 + _SOCKID.size + _SOCKID_TAIL.size + 12  # after expires, queues


def _packed(host: str, family: int) -> bytes:
    raw = ipaddress.ip_address(host.partition("%")[0]).packed
    return raw.ljust(16, b"\0") if family == socket.AF_INET else raw


def build_request(family: int, local: tuple[str, int], remote: tuple[str, int], seq: int) -> bytes:
    """A `SOCK_DIAG_BY_FAMILY` request for the TCP socket bound to `local` and connected to
    `remote` (both from that socket's point of view)."""
    body = (
        _REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, _ALL_STATES)
        + _SOCKID.pack(local[1], remote[1], _packed(local[0], family), _packed(remote[0], family))
        + _SOCKID_TAIL.pack(0, _NO_COOKIE, _NO_COOKIE)
    )
    return _HEADER.pack(_HEADER.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, seq, 0) + body


def parse_owner(reply: bytes, seq: int) -> int | None:
    """The UID in the `inet_diag_msg` answering request `seq`; None for an error answer
    (ENOENT: no such socket) or an answer to another request."""
    if len(reply) < _HEADER.size:
        return None
    _length, kind, _flags, answered, _pid = _HEADER.unpack_from(reply)
    if answered != seq or kind == NLMSG_ERROR or len(reply) < _UID_OFFSET + 4:
        return None
    return int(struct.unpack_from("=I", reply, _UID_OFFSET)[0])


class SockDiag:
    """One netlink socket, kept for the process's life; `owner_uid` never raises."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._seq = 0
        self.available = True

    def owner_uid(self, family: int, local: tuple[str, int], remote: tuple[str, int]) -> int | None:
        """UID owning the socket `local`→`remote` in this network namespace, or None when there
        is none (a remote peer) or the kernel cannot tell (no sock_diag)."""
        if not self.available:
            return None
        try:
            sock = self._sock
            if sock is None:
                sock = self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM,
                                                  NETLINK_SOCK_DIAG)
                sock.settimeout(0.5)
            self._seq += 1
            sock.send(build_request(family, local, remote, self._seq))
            reply = sock.recv(8192)
        except OSError as exc:
            if exc.errno in (errno.EPROTONOSUPPORT, errno.EAFNOSUPPORT, errno.EPERM,
                             errno.EACCES):
                self.available = False
            self.close()
            return None
        return parse_owner(reply, self._seq)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
