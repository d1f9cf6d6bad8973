"""Kubernetes discovery figures: EndpointSlice change → every proxy ACKed, and sidecar memory
with many discovered services.

Runs the in-process fake API server (tests/support/kubeapi: real HTTP, real watch streams),
a real control plane process with discovery on (`--no-auth`, SQLite in a temporary
directory), and N subscribers spread over worker processes (controlplane_bench's fleet: each
runs exactly what a sidecar runs, a Subscriber and a TableHolder). It measures:

1. EndpointSlice update on the API server → the first proxy and all N proxies run a snapshot
   with the new endpoint: p50/p99 over W updates (watch event → discovery store write →
   reconciler compile → push → apply → ACK);
2. the initial discovery of S Services (each with an EndpointSlice of three endpoints): time
   from creating them to the snapshot that holds all of them;
3. the RSS of one real sidecar process (`python -m forklane.proxy run --controlplane …`)
   once it runs the snapshot with those S services, next to one with an empty snapshot.

The fleet shares the two cores with the control plane and the fake API server, so the
all-ACKed figures are upper bounds for N sidecars on their own nodes.

    python bench/discovery_bench.py [--proxies 50] [--updates 50] [--services 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from controlplane_bench import LISTENING, ControlPlane, Fleet, percentile, poll  # noqa: E402

from tests.support.kubeapi import FakeKube  # noqa: E402

NS = "shop"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


@contextmanager
def controlplane(data_dir: Path, kubeconfig: Path) -> Iterator[ControlPlane]:
    import threading

    env = {**os.environ, "PYTHONPATH": str(REPO), "FORKLANE_KUBERNETES": "true",
           "FORKLANE_KUBECONFIG": str(kubeconfig), "FORKLANE_RECONCILE_INTERVAL": "5"}
    argv = [sys.executable, "-m", "forklane.controlplane", "serve", "--listen", "127.0.0.1:0",
            "--grpc", "127.0.0.1:0", "--data-dir", str(data_dir), "--no-auth"]
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
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
        yield ControlPlane(proc, found[0][0], found[0][1], lines)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        reader.join(timeout=10)


def service(name: str, index: int) -> dict[str, Any]:
    ip = f"10.96.{index // 250}.{index % 250 + 1}"
    return {"metadata": {"name": name},
            "spec": {"clusterIP": ip, "clusterIPs": [ip],
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}


def endpoint_slice(name: str, index: int, generation: int = 0) -> dict[str, Any]:
    base = f"10.{index // 250}.{index % 250}"
    return {"metadata": {"name": f"{name}-abc12", "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [f"{base}.{(generation + k) % 250 + 1}"],
                           "conditions": {"ready": True}} for k in range(3)],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}


async def snapshot_services(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(f"{url}/api/v1/snapshot") as resp:
        if resp.status != 200:
            return -1
        return len((await resp.json())["services"])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def snapshot_version(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(f"{url}/api/v1/snapshot") as resp:
        return str((await resp.json())["version"])


async def sidecar_rss(grpc: str, version: str, log: Path) -> float:
    """Start a real sidecar, wait until it runs snapshot `version` (its /metrics says so:
    /config would dump the whole snapshot and inflate what is measured), read its RSS."""
    argv = [sys.executable, "-P", "-m", "forklane.proxy", "run", "--controlplane", grpc,
            "--namespace", NS, "--port", "0", "--admin-port", "0", "--service", f"s0000.{NS}"]
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        async with aiohttp.ClientSession() as session:
            admin = None

            async def ready() -> bool:
                nonlocal admin
                if admin is None:
                    for part in log.read_text().split():
                        if part.startswith("admin=127.0.0.1:"):
                            admin = part.removeprefix("admin=")
                    return False
                try:
                    async with session.get(f"http://{admin}/metrics") as resp:
                        text = await resp.text()
                except aiohttp.ClientError:
                    return False
                return f'forklane_config_version{{version="{version}"}} 1.0' in text

            await poll(f"a sidecar running snapshot {version}", ready)
        await asyncio.sleep(1.0)  # let the table build's garbage settle before reading RSS
        return rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=15)


async def main(args: argparse.Namespace) -> None:
    rows: list[tuple[str, str]] = []
    async with FakeKube(bookmark_interval=30) as kube:
        kube.create("Namespace", {"metadata": {"name": NS,
                                               "labels": {"forklane.io/inject": "enabled"}}})
        small = 20
        for i in range(small):
            kube.create("Service", service(f"s{i:04d}", i), NS)
            kube.create("EndpointSlice", endpoint_slice(f"s{i:04d}", i), NS)
        with tempfile.TemporaryDirectory(prefix="forklane-bench-") as tmp, controlplane(
                Path(tmp), kube.kubeconfig(Path(tmp) / "kubeconfig")) as cp:
            async with aiohttp.ClientSession() as session:
                async def discovered(count: int) -> bool:
                    return await snapshot_services(session, cp.url) >= count

                await poll(f"{small} services discovered", lambda: discovered(small))
                rss_empty = await sidecar_rss(cp.grpc, await snapshot_version(session, cp.url),
                                              Path(tmp) / "sidecar-small.log")
                rows.append((f"sidecar RSS, {small} discovered services", f"{rss_empty:.1f} MiB"))

                rows += await updates(kube, cp, args, small, f"{small} services")

                start = time.perf_counter()
                for i in range(small, args.services):
                    kube.create("Service", service(f"s{i:04d}", i), NS)
                    kube.create("EndpointSlice", endpoint_slice(f"s{i:04d}", i), NS)
                await poll(f"{args.services} services discovered",
                           lambda: discovered(args.services))
                rows.append((f"discover {args.services - small} new Services -> snapshot",
                             f"{time.perf_counter() - start:.2f} s"))
                rows.append((f"control plane RSS, {args.services} services",
                             f"{cp.rss_mib():.1f} MiB"))
                rss_big = await sidecar_rss(cp.grpc, await snapshot_version(session, cp.url),
                                            Path(tmp) / "sidecar-big.log")
                rows.append((f"sidecar RSS, {args.services} discovered services",
                             f"{rss_big:.1f} MiB"))
                rows += await updates(kube, cp, args, args.services, f"{args.services} services")
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


async def updates(kube: FakeKube, cp: ControlPlane, args: argparse.Namespace, services: int,
                  label: str) -> list[tuple[str, str]]:
    """W EndpointSlice updates, each timed until the first and until all N proxies run it."""
    fleet = Fleet(cp.grpc, args.proxies, args.fleet_procs)
    await fleet.start()
    try:
        await poll("the fleet's first snapshot", lambda: _true(fleet.min_version() >= 0))
        firsts: list[float] = []
        alls: list[float] = []
        for n in range(args.updates):
            index = (n * 7) % services
            name = f"s{index:04d}"
            before = fleet.min_version()
            current = kube.get("EndpointSlice", f"{name}-abc12", NS)
            start = time.perf_counter()
            kube.replace("EndpointSlice", {**current, **endpoint_slice(
                name, index, generation=n + 1), "metadata": current["metadata"]})
            await fleet.wait_version(before + 1, first=True)
            firsts.append(time.perf_counter() - start)
            await fleet.wait_version(before + 1)
            alls.append(time.perf_counter() - start)
            await asyncio.sleep(0.05)  # let this round's status writes and ACK passes settle
    finally:
        await fleet.aclose()
    return [
        (f"EndpointSlice update -> first proxy ACKed, {label}, p50 / p99",
         f"{ms(statistics.median(firsts))} / {ms(percentile(firsts, 99))}"),
        (f"EndpointSlice update -> all {args.proxies} proxies ACKed, {label}, p50 / p99",
         f"{ms(statistics.median(alls))} / {ms(percentile(alls, 99))}"),
    ]


async def _true(value: bool) -> bool:
    return value


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--proxies", type=int, default=50)
    p.add_argument("--updates", type=int, default=50)
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--fleet-procs", type=int, default=2)
    return p.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
