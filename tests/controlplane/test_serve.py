"""`python -m forklane.controlplane serve` as a real process: start line, bootstrap token, SIGTERM."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

ROOT = Path(__file__).resolve().parents[2]
BANNER = re.compile(
    r"^forklane controlplane listening on http://127\.0\.0\.1:(\d+) "
    r"\(grpc 127\.0\.0\.1:(\d+), store sqlite:(.+)\)$"
)
push_missing = importlib.util.find_spec("forklane.controlplane.push") is None


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORKLANE_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


Spawn = Callable[..., "asyncio.Future[asyncio.subprocess.Process]"]


@pytest.fixture
async def spawn() -> AsyncIterator[Callable[..., object]]:
    procs: list[asyncio.subprocess.Process] = []

    async def start(*args: str) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "forklane.controlplane", *args, cwd=ROOT, env=_env(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_bad_flag_exits_2_with_a_message(spawn: Callable[..., object]) -> None:
    proc = await spawn("serve", "--listen", "nowhere")  # type: ignore[misc]
    async with asyncio.timeout(20):
        _, err = await proc.communicate()
    assert proc.returncode == 2
    assert b"listen" in err and b"Traceback" not in err


@pytest.mark.skipif(push_missing, reason="forklane.controlplane.push (the push server) is not built yet")
async def test_serve_prints_banner_serves_and_stops_on_sigterm(
    spawn: Callable[..., object], tmp_path: Path
) -> None:
    args = ("serve", "--listen", "127.0.0.1:0", "--grpc", "127.0.0.1:0", "--data-dir", str(tmp_path))
    proc = await spawn(*args)  # type: ignore[misc]
    assert proc.stdout is not None and proc.stderr is not None
    async with asyncio.timeout(20):
        line = (await proc.stdout.readline()).decode().strip()
    match = BANNER.match(line)
    assert match, line
    assert Path(match.group(3)) == tmp_path / "forklane.db"
    async with asyncio.timeout(5):  # log lines may come first; the token line is one line
        token_line = ""
        while "bootstrap admin token" not in token_line:
            token_line = (await proc.stderr.readline()).decode()
    token = token_line.rsplit(" ", 1)[-1].strip()
    assert "bootstrap admin token" in token_line and token.startswith("flk_")
    base = f"http://127.0.0.1:{match.group(1)}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/healthz") as resp:
            assert resp.status == 200
        async with session.get(f"{base}/api/v1/sandboxes",
                               headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(10):
        assert await proc.wait() == 0

    # a second start finds the stored admin token and prints none
    again = await spawn(*args)  # type: ignore[misc]
    assert again.stdout is not None and again.stderr is not None
    async with asyncio.timeout(20):
        assert BANNER.match((await again.stdout.readline()).decode().strip())
    again.send_signal(signal.SIGINT)
    async with asyncio.timeout(10):
        assert await again.wait() == 0
        rest = await again.stderr.read()
    assert b"bootstrap admin token" not in rest and b"Traceback" not in rest
