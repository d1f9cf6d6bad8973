"""The sidecar as a process: exit codes on bad input, graceful drain on SIGTERM, workers."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.polling import eventually
from tests.support.processes import ROOT


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "forklane.proxy", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--config", "/nonexistent/routing.yaml", "--port", "0"], "cannot read"),
        (["run", "--port", "0", "--header-timeout", "-1"], "header_timeout"),
        (["run", "--port", "0", "--admin-port", "0"], "--config FILE or --controlplane"),
        (["run", "--config", "x.yaml", "--port", "99999"], "a port number"),
    ],
)
def test_bad_start_exits_2_with_the_reason(args: list[str], message: str) -> None:
    result = _run(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


async def test_sigterm_finishes_requests_in_flight_then_exits_0(
    upstreams: Any, proxy_factory: Any
) -> None:
    up = await upstreams("slow")
    hold = asyncio.Event()
    up.behaviour.hold = hold
    proc = proxy_factory({"version": "d1", "services": [{"name": "web",
                                                         "endpoints": [up.address]}]},
                         "--drain-seconds", "10")
    async with httpx.AsyncClient() as client:
        in_flight = asyncio.create_task(client.get(proc.url(), headers={"host": "web"}))
        # the request reached the upstream, which holds its answer
        await eventually(lambda: bool(up.requests), what="the request reaching the upstream")
        proc.popen.send_signal(signal.SIGTERM)
        admin = proc.url("admin")
        # readiness fails at once, so the endpoint is taken out of rotation
        async def not_ready() -> bool:
            try:
                return (await client.get(f"{admin}/readyz")).status_code == 503
            except httpx.TransportError:
                return True  # the admin listener already closed

        await eventually(not_ready, what="readiness failing after SIGTERM")
        hold.set()
        response = await in_flight
    assert response.status_code == 200 and response.headers["x-upstream"] == "slow"
    assert response.headers.get("connection") == "close"  # drained: no more keep-alive
    assert proc.popen.wait(15) == 0


async def test_workers_share_the_port(upstreams: Any, tmp_path: Path) -> None:
    """`--workers 2` runs two processes on one port (SO_REUSEPORT); both answer."""
    import socket

    from tests.support.processes import spawn, wait_for_line, write_config

    up = await upstreams("web")
    config = write_config(tmp_path / "r.yaml", {"version": "w1", "services": [
        {"name": "web", "endpoints": [up.address]}]})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = spawn([sys.executable, "-m", "forklane.proxy", "run", "--config", str(config), "--port",
                  str(port), "--admin-port", "off", "--workers", "2"], tmp_path / "w.log")
    try:
        wait_for_line(proc, "forklane proxy listening", 20)
        async with httpx.AsyncClient() as client:
            for _ in range(20):
                r = await client.get(f"http://127.0.0.1:{port}/", headers={"host": "web",
                                                                           "connection": "close"})
                assert r.status_code == 200
        await eventually(lambda: proc.output().count("forklane proxy listening") == 2,
                         what="both workers listening")
    finally:
        assert proc.stop() == 0
