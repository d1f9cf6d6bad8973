"""Control-plane figures: write → every proxy ACKed, compile-and-push at scale, memory.

Starts a real control plane (`python -m controlplane serve --no-auth` on port 0, SQLite in a
temporary directory), connects N subscribers in this process (each with its own TableHolder,
exactly what a sidecar runs), and measures:

1. time from a REST write (creating a sandbox) to all N proxies having applied and ACKed the
   snapshot holding it, p50/p99 over W writes, with a small configuration;
2. compile time of the snapshot for S sandboxes x K services (the pure compiler, in process),
   and the same write-to-all-ACKed time once the control plane holds S sandboxes;
3. the control plane's RSS: idle, with N proxies connected, and with N proxies and S
   sandboxes.

The N subscribers share this process (and its cores) and decode and build every table N
times, so (1) and (2) are upper bounds of what N separate sidecars would see; the per-proxy
apply time is printed so it can be told apart.

    python bench/controlplane_bench.py [--proxies 50] [--writes 50] [--sandboxes 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from controlplane import wire  # noqa: E402
from controlplane.compiler import Inputs, compile_snapshot  # noqa: E402
from proxy.push_messages import decode_response, encode_full_response  # noqa: E402
from proxy.state import TableHolder  # noqa: E402
from proxy.subscriber import Subscriber  # noqa: E402
from proxy.table import RoutingTable, build_table  # noqa: E402

LISTENING = re.compile(r"listening on (http://\S+) \(grpc ([^,\s)]+)")
CLOSED_PORT_ENDPOINT = "127.0.0.1:9"  # discard port, closed here: fork probes fail fast
WAIT = 120.0


@dataclass
class ControlPlane:
    proc: subprocess.Popen[str]
    url: str
    grpc: str
    lines: list[str]

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")


@contextmanager
def controlplane(data_dir: Path) -> Iterator[ControlPlane]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "controlplane", "serve", "--listen", "127.0.0.1:0",
            "--grpc", "127.0.0.1:0", "--data-dir", str(data_dir), "--no-auth"]  # fmt: skip
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    found: list[tuple[str, str]] = []
    ready = threading.Event()

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            match = LISTENING.search(line)
            if match and not found:
                found.append((match.group(1).rstrip("/"), match.group(2)))
                ready.set()
        ready.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        ready.wait(timeout=60)
        if not found:
            raise SystemExit("control plane did not start:\n" + "".join(lines[-30:]))
        url, grpc_address = found[0]
        yield ControlPlane(proc, url, grpc_address, lines)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        reader.join(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


class Fleet:
    """N in-process sidecars; knows when all of them run a version (or newer)."""

    def __init__(self, address: str, count: int) -> None:
        self.holders = [TableHolder() for _ in range(count)]
        self.subs = [
            Subscriber(address, h, f"bench-proxy-{i:03d}", f"svc-{i % 50:02d}", ("outbound",))
            for i, h in enumerate(self.holders)
        ]
        self.tasks: list[asyncio.Task[None]] = []
        self._changed = asyncio.Event()
        for h in self.holders:
            h.on_swap(self._swapped)

    def _swapped(self, table: RoutingTable) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def min_version(self) -> int:
        return min(int(h.table.version) if h.table is not None else -1 for h in self.holders)

    async def wait_version(self, version: int) -> None:
        async with asyncio.timeout(WAIT):
            while self.min_version() < version:
                await self._changed.wait()

    async def start(self) -> None:
        self.tasks = [asyncio.create_task(s.run()) for s in self.subs]

    async def aclose(self) -> None:
        for s in self.subs:
            await s.aclose()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def poll(what: str, check: Callable[[], Awaitable[bool]], within: float = WAIT) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def sandbox_body(name: str, services: list[str]) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"forks": [{"service": s, "endpoints": [CLOSED_PORT_ENDPOINT]} for s in services]},
    }


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


class Api:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def post(self, plural: str, body: dict[str, Any]) -> int:
        async with self.session.post(f"{self.url}/api/v1/{plural}", json=body) as resp:
            doc = await resp.json()
            if resp.status != 201:
                raise SystemExit(f"POST {plural} -> {resp.status}: {doc}")
            return int(doc["metadata"]["resourceVersion"])

    async def proxies(self) -> list[dict[str, Any]]:
        async with self.session.get(f"{self.url}/api/v1/proxies") as resp:
            items: list[dict[str, Any]] = (await resp.json())["items"]
            return items


async def timed_write(api: Api, fleet: Fleet, name: str, services: list[str]) -> float:
    start = time.perf_counter()
    version = await api.post("sandboxes", sandbox_body(name, services))
    await fleet.wait_version(version)
    return time.perf_counter() - start


def compile_figures(sandboxes: int, services: int, forks: int) -> tuple[float, float, float, int]:
    """In-process: compile S x K, encode once, decode and build one proxy's table."""
    svc = [
        wire.ServiceResource.model_validate({
            "metadata": {"name": f"svc-{i:02d}"},
            "spec": {"endpoints": [f"10.0.{i}.1:8080"], "authorities": [f"svc-{i:02d}.shop"]},
        })
        for i in range(services)
    ]
    sbs = [
        wire.Sandbox.model_validate({
            **sandbox_body(f"sb-{i:04d}", [f"svc-{(i + j) % services:02d}" for j in range(forks)]),
            "status": {"phase": "Ready", "routingKey": f"key{i:032x}"},
        })
        for i in range(sandboxes)
    ]
    t0 = time.perf_counter()
    compiled = compile_snapshot(Inputs(revision=1, services=svc, sandboxes=sbs))
    t1 = time.perf_counter()
    data = encode_full_response("1", "1", compiled.snapshot.model_dump_json().encode())
    t2 = time.perf_counter()
    response = decode_response(data)
    assert response.snapshot is not None
    build_table(response.snapshot)
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2, len(data)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


async def main(args: argparse.Namespace) -> None:
    rows: list[tuple[str, str]] = []
    c_time, e_time, apply_time, size = compile_figures(
        args.sandboxes, args.services, args.forks_per_sandbox
    )
    scale = f"{args.sandboxes} sandboxes x {args.services} services"
    rows.append((f"compile ({scale}, {args.forks_per_sandbox} forks each)", ms(c_time)))
    rows.append((f"encode snapshot once ({size / 1e6:.2f} MB JSON)", ms(e_time)))
    rows.append(("one proxy: decode + validate + build table", ms(apply_time)))

    with tempfile.TemporaryDirectory(prefix="forklane-bench-") as tmp, controlplane(
        Path(tmp)
    ) as cp:
        rows.append(("control plane RSS, idle", f"{cp.rss_mib():.1f} MiB"))
        async with aiohttp.ClientSession() as session:
            api = Api(session, cp.url)
            names = [f"svc-{i:02d}" for i in range(args.services)]
            for i, name in enumerate(names):
                await api.post("services", {
                    "metadata": {"name": name},
                    "spec": {"endpoints": [f"10.0.{i}.1:8080"], "authorities": [f"{name}.shop"]},
                })
            fleet = Fleet(cp.grpc, args.proxies)
            await fleet.start()
            try:
                count = int(args.proxies)

                async def all_connected() -> bool:
                    return len(await api.proxies()) == count

                async def all_served() -> bool:
                    return fleet.min_version() >= 0

                await poll(f"{count} proxies to connect", all_connected)
                await poll("the first snapshot on every proxy", all_served)
                rows.append((f"control plane RSS, {args.proxies} proxies connected",
                             f"{cp.rss_mib():.1f} MiB"))

                latencies = [
                    await timed_write(api, fleet, f"w-{i:03d}", [names[i % len(names)]])
                    for i in range(args.writes)
                ]
                rows.append((
                    f"write -> {args.proxies} proxies ACKed, small config: p50 / p99",
                    f"{ms(statistics.median(latencies))} / {ms(percentile(latencies, 99))}",
                ))

                load_start = time.perf_counter()
                sem = asyncio.Semaphore(16)

                async def create(i: int) -> None:
                    forks = [names[(i + j) % len(names)] for j in range(args.forks_per_sandbox)]
                    async with sem:
                        await api.post("sandboxes", sandbox_body(f"sb-{i:04d}", forks))

                await asyncio.gather(*(create(i) for i in range(args.sandboxes)))
                loaded_at = await api.post("sandboxes", sandbox_body("sb-last", names[:1]))
                await fleet.wait_version(loaded_at)
                rows.append((f"load {args.sandboxes} sandboxes over REST, all proxies caught up",
                             f"{time.perf_counter() - load_start:.1f} s"))

                big = [
                    await timed_write(api, fleet, f"big-{i:02d}", [names[i % len(names)]])
                    for i in range(args.big_writes)
                ]
                rows.append((
                    f"write -> {args.proxies} proxies ACKed at {scale}: p50 / max",
                    f"{ms(statistics.median(big))} / {ms(max(big))}",
                ))
                rows.append((f"control plane RSS, {args.proxies} proxies + {scale}",
                             f"{cp.rss_mib():.1f} MiB"))

                final = fleet.min_version()
                acked = [int(p.get("ackedVersion") or -1) for p in await api.proxies()]
                if len(acked) != args.proxies or min(acked) < final:
                    raise SystemExit(f"control plane disagrees: acked {sorted(acked)[:3]}")
            finally:
                await fleet.aclose()

    width = max(len(r[0]) for r in rows)
    print(f"\nforklane control plane ({args.proxies} in-process proxies, python "
          f"{sys.version.split()[0]}, {os.cpu_count()} cpus)")
    print("-" * (width + 20))
    for label, value in rows:
        print(f"{label:<{width}}  {value:>16}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxies", type=int, default=50)
    parser.add_argument("--writes", type=int, default=50)
    parser.add_argument("--sandboxes", type=int, default=1000)
    parser.add_argument("--services", type=int, default=50)
    parser.add_argument("--forks-per-sandbox", type=int, default=2)
    parser.add_argument("--big-writes", type=int, default=10)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
