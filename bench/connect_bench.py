"""`forklane connect`: what the tunnel adds to a fork's requests, and how fast it carries a
download.

Real processes on loopback: a control plane, a proxy, and `forklane connect` serving the
sandbox `tunnel`'s fork of `web` from a local server in this process. The sandbox `direct`
forks `web` to the same local server without a tunnel. Both are measured through the same
proxy: keyed GETs at a fixed rate (open loop, RATE per second for SECONDS; latency p50/p99),
then one download of SIZE MiB each (throughput).

    .venv/bin/python bench/connect_bench.py
    .venv/bin/python bench/connect_bench.py --rate 100 --seconds 10 --size 100

Not part of the test suite. Bounded: every wait has a deadline; every process is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from tests.integration.test_controlplane_e2e import (  # noqa: E402
    ADMIN,
    World,
    base_world,
    endpoint,
    wait_acked,
)
from tests.support.processes import spawn, wait_for_line  # noqa: E402

KEYS = {"tunnel": "benchtunnel0123456789abcdef", "direct": "benchdirect0123456789abcdef"}


async def paced(session: aiohttp.ClientSession, url: str, key: str, rate: int,
                seconds: float) -> list[float]:
    """Latency (ms) of every request of an open-loop schedule: one every 1/rate s."""
    latencies: list[float] = []
    failures: list[str] = []

    async def one() -> None:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(10), session.get(
                    url, headers={"Host": "web", "x-forklane-routing-key": key}) as r:
                await r.read()
                if r.status != 200:
                    failures.append(str(r.status))
                    return
        except (aiohttp.ClientError, TimeoutError) as exc:
            failures.append(type(exc).__name__)
            return
        latencies.append((time.perf_counter() - started) * 1000)

    tasks = []
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)  # the schedule itself
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    if failures:
        print(f"  {len(failures)} failed: {sorted(set(failures))}")
    return latencies


async def download(session: aiohttp.ClientSession, url: str, key: str) -> tuple[int, float]:
    started = time.perf_counter()
    size = 0
    async with asyncio.timeout(300), session.get(
            url, headers={"Host": "web", "x-forklane-routing-key": key}) as r:
        assert r.status == 200, r.status
        async for chunk in r.content.iter_chunked(1 << 20):
            size += len(chunk)
    return size, time.perf_counter() - started


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def run(rate: int, seconds: float, size_mib: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with aiohttp.ClientSession() as session:
            world = World(Path(tmp), session)
            connect = None
            try:
                plane, api, token, _ = await base_world(world)
                local = await world.upstream("laptop")
                await api.write("POST", "sandboxes", {"metadata": {"name": "tunnel"}, "spec": {
                    "routingKey": KEYS["tunnel"], "forks": [{"service": "web", "local": True}]}})
                await api.write("POST", "sandboxes", {"metadata": {"name": "direct"}, "spec": {
                    "routingKey": KEYS["direct"],
                    "forks": [{"service": "web", "endpoints": [endpoint(local)]}]}})
                sidecar = world.sidecar(plane, token, "bench")
                connect = spawn([sys.executable, "-m", "forklane", "--url", plane.url,
                                 "--token", ADMIN, "connect", "--sandbox", "tunnel",
                                 "--service", "web", "--to", endpoint(local)],
                                Path(tmp) / "connect.log")
                await asyncio.to_thread(wait_for_line, connect, "connected: sandbox", 30)
                version = int((await api.call("GET", "snapshot"))[1]["version"])
                await wait_acked(api, ["bench"], version)
                url = f"http://127.0.0.1:{sidecar.proc.ports['outbound']}/b"
                for path in ("direct", "tunnel"):  # warm the pools
                    await paced(session, url, KEYS[path], 50, 1)
                print(f"latency at {rate} req/s for {seconds:g} s (ms):")
                for path in ("direct", "tunnel"):
                    lat = await paced(session, url, KEYS[path], rate, seconds)
                    print(f"  {path:7s} n={len(lat)} p50={statistics.median(lat):.2f} "
                          f"p99={pct(lat, 99):.2f}")
                local.download_bytes = size_mib << 20
                print(f"download of {size_mib} MiB:")
                for path in ("direct", "tunnel"):
                    got, took = await download(session, url, KEYS[path])
                    print(f"  {path:7s} {got >> 20} MiB in {took:.2f} s = "
                          f"{got / took / (1 << 20):.1f} MiB/s")
            finally:
                if connect is not None:
                    connect.stop()
                await world.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--size", type=int, default=100, help="MiB")
    args = parser.parse_args()
    asyncio.run(run(args.rate, args.seconds, args.size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
