"""Original destination parsing and the loop guard's socket-owner look-up, on real sockets.

The redirected case itself needs nat rules: tests/integration/test_capture_netns.py."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator

import pytest

from forklane.proxy.listener.origdst import (
    Address,
    captured_destination,
    original_destination,
    parse_sockaddr,
)
from forklane.proxy.listener.peer import SockDiag, build_request, parse_owner


def sockaddr_in(host: str, port: int) -> bytes:
    return (struct.pack("=H", socket.AF_INET) + struct.pack(">H", port)
            + socket.inet_pton(socket.AF_INET, host) + bytes(8))


def sockaddr_in6(host: str, port: int) -> bytes:
    return (struct.pack("=H", socket.AF_INET6) + struct.pack(">H", port) + bytes(4)
            + socket.inet_pton(socket.AF_INET6, host) + bytes(4))


def test_parse_sockaddr_v4_and_v6() -> None:
    assert parse_sockaddr(sockaddr_in("198.18.0.2", 6379)) == Address("198.18.0.2", 6379)
    assert parse_sockaddr(sockaddr_in6("2001:db8::2", 443)) == Address("2001:db8::2", 443)
    assert str(Address("2001:db8::2", 443)) == "[2001:db8::2]:443"
    assert str(Address("10.0.0.1", 80)) == "10.0.0.1:80"


@pytest.mark.parametrize("raw", [b"", b"\x02\x00\x00", struct.pack("=H", 1) + bytes(14),
                                 struct.pack("=H", socket.AF_INET6) + bytes(10)])
def test_parse_sockaddr_rejects_garbage(raw: bytes) -> None:
    with pytest.raises(ValueError):
        parse_sockaddr(raw)


@pytest.fixture
def loopback_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    yield client, accepted
    for s in (client, accepted, server):
        s.close()


def test_a_direct_connection_is_not_captured(loopback_pair: tuple[socket.socket, ...]) -> None:
    _, accepted = loopback_pair
    original = original_destination(accepted)
    # no conntrack entry (ENOENT), or one that is not NATed (the listener's own address)
    assert original is None or original == Address(*accepted.getsockname())
    assert captured_destination(accepted) is None


def test_request_layout_round_trips_the_sequence_number() -> None:
    request = build_request(socket.AF_INET, ("10.0.0.1", 1234), ("10.0.0.2", 80), seq=7)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", request)
    assert (length, kind, flags, seq) == (len(request), 20, 1, 7)
    assert len(request) == 16 + 8 + 48  # nlmsghdr + inet_diag_req_v2
    error = struct.pack("=IHHII", 36, 2, 0, 7, 0) + struct.pack("=i", -2) + bytes(16)
    assert parse_owner(error, 7) is None


def test_owner_of_our_own_connection_is_us(loopback_pair: tuple[socket.socket, ...]) -> None:
    client, _ = loopback_pair
    diag = SockDiag()
    try:
        owner = diag.owner_uid(socket.AF_INET, client.getsockname(), client.getpeername())
        if owner is None and not diag.available:
            pytest.skip("this kernel offers no sock_diag")
        assert owner == os.geteuid()
        # nobody owns a socket that does not exist
        assert diag.owner_uid(socket.AF_INET, ("127.0.0.1", 1), ("127.0.0.1", 2)) is None
    finally:
        diag.close()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to open a connection as another user")
def test_owner_of_another_users_connection() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    code = (f"import socket,sys; s=socket.create_connection(('127.0.0.1', {port})); "
            "print(s.getsockname()[1], flush=True); sys.stdin.read()")
    diag = SockDiag()
    with subprocess.Popen(["setpriv", "--reuid=4321", "--regid=4321", "--clear-groups",
                           sys.executable, "-c", code],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as child:
        try:
            assert child.stdout is not None
            client_port = int(child.stdout.readline())
            accepted, peer = server.accept()
            assert peer[1] == client_port
            assert diag.owner_uid(socket.AF_INET, peer, accepted.getsockname()) == 4321
            accepted.close()
        finally:
            diag.close()
            child.kill()
            server.close()
