"""Control-plane figures: write → every proxy ACKed, compile-and-push at scale, memory.

Starts a real control plane (`python -m forklane.controlplane serve --no-auth` on port 0, SQLite in a
temporary directory), connects N subscribers spread over a few worker processes (each with
its own TableHolder, exactly what a sidecar runs), and measures:

1. time from a REST write (creating a sandbox) to the first proxy and to all N proxies having
   applied and ACKed the snapshot holding it, p50/p99 over W writes, with a small
   configuration;
2. compile time of the snapshot for S sandboxes x K services (the pure compiler, in process),
   and the same write-to-all-ACKed time once the control plane holds S sandboxes;
3. the control plane's RSS: idle, with N proxies connected, and with N proxies and S
   sandboxes.

The N subscribers share the machine's cores (with the control plane) and decode and build
every table N times, so the all-ACKed figures are upper bounds of what N separate sidecars on
their own nodes would see; "first proxy applied" is close to the control plane's own
compile-and-push time, and the per-proxy apply time is printed so the parts can be told apart.

    python bench/controlplane_bench.py [--proxies 50] [--writes 50] [--sandboxes 1000]
                                       [--fleet-procs 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
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

from forklane.controlplane import wire  # noqa: E402
from forklane.controlplane.compiler import Inputs, compile_snapshot  # noqa: E402
from forklane.proxy.push_messages import decode_response, encode_full_response  # noqa: E402
from forklane.proxy.state import TableHolder  # noqa: E402
from forklane.proxy.subscriber import Subscriber  # noqa: E402
from forklane.proxy.table import RoutingTable, build_table  # noqa: E402

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
    argv = [sys.executable, "-m", "forklane.controlplane", "serve", "--listen", "127.0.0.1:0",
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
    """N sidecars spread over W worker processes (`--worker`), each running its share of
    subscribers exactly as a sidecar does (own TableHolder). Workers print the lowest
    version their subscribers run whenever it rises; this process only reads those lines, so
    the clock that times a write never waits behind a table build."""

    def __init__(self, address: str, count: int, workers: int) -> None:
        self.address = address
        self.count = count
        self.workers = max(1, min(workers, count))
        self.procs: list[asyncio.subprocess.Process] = []
        self.readers: list[asyncio.Task[None]] = []
        self.versions: list[int] = [-1] * self.workers
        self.firsts: list[int] = [-1] * self.workers
        self._changed = asyncio.Event()

    def min_version(self) -> int:
        return min(self.versions)

    async def wait_version(self, version: int, *, first: bool = False) -> None:
        """Until every proxy (or, with `first`, any one) runs `version` or newer."""
        async with asyncio.timeout(WAIT):
            while (max(self.firsts) if first else self.min_version()) < version:
                event = self._changed
                await event.wait()

    async def start(self) -> None:
        share = [self.count // self.workers + (i < self.count % self.workers)
                 for i in range(self.workers)]
        first = 0
        for w, n in enumerate(share):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--worker", self.address, str(first), str(n),
                stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)},
            )
            first += n
            self.procs.append(proc)
            self.readers.append(asyncio.create_task(self._read(w, proc)))

    async def _read(self, w: int, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            kind, _, value = raw.decode().strip().partition(" ")
            if kind == "v":
                self.versions[w] = int(value)
            elif kind == "f":
                self.firsts[w] = int(value)
            else:
                continue
            event, self._changed = self._changed, asyncio.Event()
            event.set()

    async def aclose(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.terminate()
        for proc in self.procs:
            await proc.wait()
        await asyncio.gather(*self.readers, return_exceptions=True)


async def worker(address: str, first: int, count: int) -> None:
    """`--worker ADDR FIRST COUNT`: run COUNT subscribers; print `v <lowest version>` when it
    rises and `f <highest version>` when that rises."""
    holders = [TableHolder() for _ in range(count)]
    subs = [
        Subscriber(address, h, f"bench-proxy-{i:03d}", f"svc-{i % 50:02d}", ("outbound",))
        for i, h in zip(range(first, first + count), holders, strict=True)
    ]
    reported, highest = -1, -1

    def swapped(table: RoutingTable) -> None:
        nonlocal reported, highest
        if int(table.version) > highest:
            highest = int(table.version)
            print(f"f {highest}", flush=True)
        low = min(int(h.table.version) if h.table is not None else -1 for h in holders)
        if low > reported:
            reported = low
            print(f"v {low}", flush=True)

    for h in holders:
        h.on_swap(swapped)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    tasks = [asyncio.create_task(s.run()) for s in subs]
    await stop.wait()
    for s in subs:
        await s.aclose()
    await asyncio.gather(*tasks, return_exceptions=True)


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


async def timed_write(
    api: Api, fleet: Fleet, name: str, services: list[str]
) -> tuple[float, float]:
    """(seconds until the first proxy runs the write, seconds until all of them do)."""
    start = time.perf_counter()
    version = await api.post("sandboxes", sandbox_body(name, services))
    await fleet.wait_version(version, first=True)
    first = time.perf_counter() - start
    await fleet.wait_version(version)
    return first, time.perf_counter() - start


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


def timing_rows(
    samples: list[tuple[float, float]], proxies: int, what: str
) -> list[tuple[str, str]]:
    firsts, alls = [f for f, _ in samples], [a for _, a in samples]
    return [
        (f"write -> first proxy applied, {what}: p50 / p99",
         f"{ms(statistics.median(firsts))} / {ms(percentile(firsts, 99))}"),
        (f"write -> {proxies} proxies ACKed, {what}: p50 / p99",
         f"{ms(statistics.median(alls))} / {ms(percentile(alls, 99))}"),
    ]


async def main(args: argparse.Namespace) -> None:
    fleet_procs = max(1, min(args.fleet_procs, args.proxies))
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
            fleet = Fleet(cp.grpc, args.proxies, args.fleet_procs)
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
                rows += timing_rows(latencies, args.proxies, "small config")

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
                rows += timing_rows(big, args.proxies, scale)
                rows.append((f"control plane RSS, {args.proxies} proxies + {scale}",
                             f"{cp.rss_mib():.1f} MiB"))

                final = fleet.min_version()
                acked = [int(p.get("ackedVersion") or -1) for p in await api.proxies()]
                if len(acked) != args.proxies or min(acked) < final:
                    raise SystemExit(f"control plane disagrees: acked {sorted(acked)[:3]}")
            finally:
                await fleet.aclose()

    width = max(len(r[0]) for r in rows)
    print(f"\nforklane control plane ({args.proxies} proxies in {fleet_procs} processes, python "
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
    parser.add_argument("--fleet-procs", type=int, default=2,
                        help="worker processes the proxies are spread over")
    return parser.parse_args()


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        asyncio.run(worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    else:
        asyncio.run(main(parse_args()))
