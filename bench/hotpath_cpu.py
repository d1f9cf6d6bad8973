"""CPU time the proxy spends per HTTP/1.1 request: a measure that does not depend on load.

Wall-clock throughput on a shared 2-core machine moves with whatever else runs; the CPU time
the proxy process itself burns per request moves far less. This starts one upstream (fixed
answer) and a client in this process, one proxy process (`python -m forklane.proxy run`), sends
REQUESTS requests over CONNS keep-alive connections with the shared benchmark's header mixes,
and reports the proxy's on-CPU time per request (from /proc/PID/schedstat, nanoseconds),
the median of ROUNDS rounds.

With `--callgrind` the proxy runs under `valgrind --tool=callgrind` and the figure is the
number of instructions it executed per request (counters zeroed after the warm-up, dumped after
the round): repeatable to a fraction of a percent whatever else the machine does.

    .venv/bin/python bench/hotpath_cpu.py                      # both modes, both mixes
    .venv/bin/python bench/hotpath_cpu.py --modes interpreted --mixes real
    .venv/bin/python bench/hotpath_cpu.py --python OTHER/.venv/bin/python --modes default
                                                     # another checkout (no --hot-path flag)

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_COMMON = [
    ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                   "Chrome/131.0 Safari/537.36"),
    ("accept", "application/json, text/plain, */*"),
    ("accept-encoding", "gzip, deflate, br"),
    ("accept-language", "en-US,en;q=0.9"),
    ("cookie", "session=8f2c1e9a7b3d4f60a1b2c3d4e5f60718; theme=dark"),
    ("x-request-id", "5b1f3a2e-7c4d-4e8f-9a0b-1c2d3e4f5a6b"),
    ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    ("tracestate", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
    ("authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.c2lnbmF0dXJl"),
    ("x-forwarded-for", "203.0.113.7"),
]


def _request(host: str, path: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", *[f"{k}: {v}" for k, v in headers]]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def mix(name: str, host: str) -> list[bytes]:
    """The request cycle of the shared benchmark's route-half.lua / route-real.lua."""
    if name == "half":
        return [_request(host, "/", [("x-routing-key", "abc")]), _request(host, "/", [])]
    keyed = [*_COMMON, ("x-routing-key", "abc")]
    bag = [*_COMMON, ("baggage", "userId=42,sd-routing-key=abc,region=eu")]
    path = "/api/v1/items?page=2"
    return [_request(host, path, keyed), _request(host, path, _COMMON),
            _request(host, path, bag), _request(host, path, _COMMON)]


class _Upstream(asyncio.Protocol):
    ANSWER = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        n = self.buf.count(b"\r\n\r\n")
        if n:
            self.buf = self.buf[self.buf.rfind(b"\r\n\r\n") + 4:]
            self.transport.write(self.ANSWER * n)  # type: ignore[attr-defined]


def _cpu_ns(pid: int) -> int:
    with open(f"/proc/{pid}/schedstat") as fh:
        return int(fh.read().split()[0])


def _callgrind(pid: int, action: str, out: Path) -> int:
    """Zero (`-z`) or dump (`-d`) the counters of a process under callgrind; after a dump,
    the instructions counted since the last zeroing."""
    before = set(out.parent.glob(out.name + "*"))
    subprocess.run(["callgrind_control", action, str(pid)], check=True, capture_output=True)
    if action != "-d":
        return 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = set(out.parent.glob(out.name + "*")) - before
        for path in new:
            text = path.read_text(errors="replace")
            for line in text.splitlines():
                if line.startswith("totals:") or line.startswith("summary:"):
                    return int(line.split()[1])
        time.sleep(0.2)  # waiting for valgrind to write the dump file
    raise RuntimeError("callgrind wrote no dump")


async def _client(port: int, cycle: list[bytes], count: int, size: dict[str, int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for i in range(count):
            writer.write(cycle[i % len(cycle)])
            if "n" not in size:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                size["n"] = len(head) + length
            else:
                await reader.readexactly(size["n"])
    finally:
        writer.close()


async def measure(python: str, mode: str, mix_name: str, requests: int, conns: int,
                  rounds: int, callgrind: bool = False) -> list[float]:
    loop = asyncio.get_running_loop()
    baseline = await loop.create_server(_Upstream, "127.0.0.1", 0)
    sandbox = await loop.create_server(_Upstream, "127.0.0.1", 0)
    b_port = baseline.sockets[0].getsockname()[1]
    s_port = sandbox.sockets[0].getsockname()[1]
    keep = os.environ.get("CALLGRIND_KEEP")  # a folder to keep the dumps in (for annotate)
    with tempfile.TemporaryDirectory() as tmp:
        if keep:
            tmp = keep
        config = Path(tmp) / "routing.yaml"
        config.write_text(
            "version: cpu-1\n"
            "carriers:\n  - {kind: header, name: x-routing-key}\n"
            "  - {kind: baggage, name: sd-routing-key}\n"
            f"services:\n  - {{name: web, endpoints: ['127.0.0.1:{b_port}']}}\n"
            f"forks:\n  - {{routing_key: abc, service: web, endpoints: ['127.0.0.1:{s_port}']}}\n"
        )
        log = open(Path(tmp) / "proxy.log", "w+")  # noqa: ASYNC230 - a bench's set-up
        dump = Path(tmp) / "callgrind.out"
        wrap = (["valgrind", "--tool=callgrind", f"--callgrind-out-file={dump}"]
                if callgrind else [])
        proc = subprocess.Popen(  # noqa: ASYNC220
            [*wrap, python, "-P", "-m", "forklane.proxy", "run", "--config", str(config), "--port", "0",
             "--admin-port", "off", "--inbound-port", "off",
             *(["--hot-path", mode] if mode != "default" else [])],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp,
        )
        try:
            port = 0
            deadline = time.monotonic() + (600 if callgrind else 30)
            while not port and time.monotonic() < deadline:
                await asyncio.sleep(0.05)  # polling the proxy's log for its ready line
                log.seek(0)
                for line in log.read().splitlines():
                    if "listening" in line:
                        port = int(line.split("outbound=127.0.0.1:")[1].split()[0])
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"proxy exited: {log.read()}")
            cycle = mix(mix_name, "web")
            size: dict[str, int] = {}
            await _client(port, cycle, 200, size)  # warm up: pools, caches
            results = []
            per_conn = requests // conns
            for _ in range(rounds):
                size.clear()
                await _client(port, cycle, 1, size)
                if callgrind:
                    await asyncio.to_thread(_callgrind, proc.pid, "-z", dump)
                before = _cpu_ns(proc.pid)
                await asyncio.gather(*(_client(port, cycle, per_conn, dict(size))
                                       for _ in range(conns)))
                after = _cpu_ns(proc.pid)
                if callgrind:
                    counted = await asyncio.to_thread(_callgrind, proc.pid, "-d", dump)
                    results.append(counted / (per_conn * conns))
                else:
                    results.append((after - before) / 1000 / (per_conn * conns))
            return results
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
            log.close()
            baseline.close()
            sandbox.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--modes", default="compiled,interpreted")
    parser.add_argument("--mixes", default="half,real")
    parser.add_argument("--requests", type=int, default=int(os.environ.get("REQUESTS", 20000)))
    parser.add_argument("--conns", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--callgrind", action="store_true",
                        help="count instructions under valgrind instead of CPU time")
    args = parser.parse_args()
    try:
        import uvloop
        run = uvloop.run
    except ImportError:
        run = asyncio.run
    unit = "instructions/request" if args.callgrind else "µs CPU/request"
    print(f"{'mode':<12} {'mix':<5} {unit + ' (median)':>30}  rounds")
    for mode in args.modes.split(","):
        for mix_name in args.mixes.split(","):
            values = run(measure(args.python, mode, mix_name, args.requests, args.conns,
                                 args.rounds, args.callgrind))
            rounds = " ".join(f"{v:.1f}" for v in values)
            print(f"{mode:<12} {mix_name:<5} {statistics.median(values):>30.1f}  {rounds}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
