"""A raw TCP client for the network-namespace tests (stdlib only, runs as the app's user).

    python nsclient.py banner HOST PORT      # wait for a server-first greeting, answer it
    python nsclient.py echo HOST PORT SIZE [http]
        # send SIZE random bytes (after "\0", or after an HTTP request head with `http`),
        # half-close, read everything back

Prints one JSON line: what came back and how long it took.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time


def main(argv: list[str]) -> int:
    mode, host, port = argv[0], argv[1], int(argv[2])
    started = time.monotonic()
    sock = socket.create_connection((host, port), timeout=20)
    out: dict[str, object] = {}
    if mode == "banner":
        reader = sock.makefile("rb")
        out["banner"] = reader.readline().decode()
        out["waited"] = time.monotonic() - started
        sock.sendall(b"HELO forklane\r\n")
        out["reply"] = reader.readline().decode()
    elif mode == "echo":
        first = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" if argv[4:] == ["http"] else b"\0"
        payload = first + os.urandom(int(argv[3]))
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
        received = b"".join(chunks)
        out["intact"] = received[: len(payload)] == payload
        out["digest_ok"] = received[len(payload):].decode() == (
            "sha256:" + hashlib.sha256(payload).hexdigest())
        out["received"] = len(received)
    sock.close()
    out["elapsed"] = time.monotonic() - started
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
