"""Resident memory of a proxy process before, during and after many idle keep-alive client
connections: the per-connection cost while they are open, and what stays once they are gone.

    .venv/bin/python bench/memory_after_load.py --connections 8000 [--rounds 2]

Starts a real proxy process (outbound listener, one HTTP/1.1 upstream in this process), waits
until it is settled, then per round: opens N client connections, sends one keep-alive request
on each, reads the answers, keeps them idle, measures, closes them all and measures again once
the proxy has counted them closed. Prints one JSON line per measurement. Bounded: every step
has a deadline. Uses file descriptors for 2 x N sockets in this process and N in the proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.processes import start_proxy, write_config  # noqa: E402

ANSWER = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(ANSWER)
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def open_metric(admin: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", admin)
    writer.write(b"GET /metrics HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
    text = (await asyncio.wait_for(reader.read(), 10)).decode()
    writer.close()
    match = re.search(r"^forklane_downstream_connections_open (\S+)", text, re.M)
    if match is None:
        match = re.search(r"^forklane_downstream_connections (\S+)", text, re.M)
    return float(match.group(1)) if match else -1.0


async def settle(pid: int, seconds: float = 1.0) -> int:
    """RSS once it has not changed by more than 64 KiB for `seconds` (at most 15 s)."""
    deadline = time.monotonic() + 15
    last, since = rss_kib(pid), time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)  # sampling a process's memory, not synchronising
        now = rss_kib(pid)
        if abs(now - last) > 64:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= seconds:
            break
    return rss_kib(pid)


async def one_round(port: int, admin: int, pid: int, n: int, round_no: int) -> None:
    conns = []
    started = time.monotonic()
    for i in range(0, n, 500):
        batch = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port)
                                       for _ in range(min(500, n - i))))
        for _, writer in batch:
            writer.write(b"GET / HTTP/1.1\r\nhost: svc\r\n\r\n")
        for reader, _ in batch:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\nok"), 30)
        conns.extend(batch)
    opened = time.monotonic() - started
    peak = await settle(pid)
    print(json.dumps({"round": round_no, "phase": "open", "connections": n,
                      "rss_kib": peak, "seconds_to_open": round(opened, 1)}), flush=True)
    for _, writer in conns:
        writer.close()
    deadline = time.monotonic() + 30
    while await open_metric(admin) > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.2)  # polling another process's gauge, with a deadline
    after = await settle(pid, 2.0)
    print(json.dumps({"round": round_no, "phase": "closed", "rss_kib": after}), flush=True)


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=8000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    server = await asyncio.start_server(upstream, "127.0.0.1", 0, backlog=4096)
    up_port = server.sockets[0].getsockname()[1]
    tmp = Path(tempfile.mkdtemp(prefix="forklane-mem-"))
    config = write_config(tmp / "routing.yaml", {
        "version": "mem", "services": [{"name": "svc", "endpoints": [f"127.0.0.1:{up_port}"],
                                           "timeouts": {"connect": 10}}]})
    # Started from a thread: this loop serves the upstream the proxy may probe meanwhile.
    proxy = await asyncio.to_thread(start_proxy, config, tmp / "proxy.log", "--idle-timeout",
                                    "600", "--max-idle-per-endpoint", "64")
    try:
        pid = proxy.pid
        baseline = await settle(pid)
        print(json.dumps({"phase": "baseline", "rss_kib": baseline}), flush=True)
        for r in range(args.rounds):
            await one_round(proxy.ports["outbound"], proxy.ports["admin"], pid,
                            args.connections, r + 1)
    finally:
        proxy.stop()
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
