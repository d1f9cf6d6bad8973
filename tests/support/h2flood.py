"""An HTTP/2 flooding client, run as its own process by the flood tests.

    python -m tests.support.h2flood KIND PORT

Floods the proxy on 127.0.0.1:PORT with one kind of abuse, reconnecting whenever the proxy
closes the connection, until it receives SIGTERM; then prints one JSON line of what it saw.
A process of its own, so the flood never competes with the test's event loop for the GIL.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
from collections.abc import Callable
from types import FrameType

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST, SETTINGS, PING, WINDOW_UPDATE, CONTINUATION = 0, 1, 2, 3, 4, 6, 8, 9


def frame(ftype: int, payload: bytes = b"", flags: int = 0, sid: int = 0) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") + payload


REQUEST_BLOCK = hpack.Encoder().encode(
    [(":method", "GET"), (":scheme", "http"), (":authority", "grpcsvc"), (":path", "/attack")]
)


def settings_flood() -> bytes:
    return frame(SETTINGS, b"\x00\x03\x00\x00\x00\x64") * 4000


def ping_flood() -> bytes:
    return frame(PING, b"01234567") * 4000


def empty_data_flood() -> bytes:
    return frame(HEADERS, REQUEST_BLOCK, flags=0x4, sid=1) + frame(DATA, b"", sid=1) * 4000


def continuation_flood() -> bytes:
    return frame(HEADERS, REQUEST_BLOCK, sid=1) + frame(CONTINUATION, b"a" * 8000, sid=1) * 100


def rapid_reset_flood() -> bytes:
    out = bytearray()
    for i in range(2000):
        sid = 2 * i + 1
        out += frame(HEADERS, REQUEST_BLOCK, flags=0x5, sid=sid)
        out += frame(RST, b"\x00\x00\x00\x08", sid=sid)  # CANCEL
    return bytes(out)


FLOODS: dict[str, Callable[[], bytes]] = {
    "settings": settings_flood,
    "ping": ping_flood,
    "empty-data": empty_data_flood,
    "continuation": continuation_flood,
    "rapid-reset": rapid_reset_flood,
}


def main(kind: str, port: int) -> int:
    payload = FLOODS[kind]()
    opening = PREFACE + frame(SETTINGS)
    seen = {"connections": 0, "closed_by_proxy": 0, "bytes_sent": 0}
    stopping = False

    def stop(_sig: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    print("ready", flush=True)
    while not stopping:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=2)
        except OSError:
            continue
        seen["connections"] += 1
        sock.settimeout(0.2)
        try:
            sock.sendall(opening)
            while not stopping:
                sock.sendall(payload)
                seen["bytes_sent"] += len(payload)
        except TimeoutError:
            continue  # the proxy pauses reading us (backpressure): try again
        except OSError:
            seen["closed_by_proxy"] += 1
        finally:
            sock.close()
    print(json.dumps(seen), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
