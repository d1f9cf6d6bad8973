"""Ports another process holds, and gRPC keepalive between a real proxy and control plane.

- A port in use is one line naming it and exit 2, for the proxy's listeners and for both
  control-plane addresses. The gRPC port is held with SO_REUSEPORT, as another gRPC server
  (another control plane) holds it by default: a second control plane must refuse it rather
  than silently share it and split the proxies between two replicas.
- Keepalive: the proxy pings every `controlplane_keepalive`, the control plane accepts pings
  `grpc_min_ping_interval` apart. With values that agree the stream stays up; with values
  that disagree gRPC answers GOAWAY `too_many_pings` within a few pings, which the second
  test shows (so the first one's window is long enough to catch a mismatch), and gRPC's own
  C-core line about it arrives in forklane's log format, not raw.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.sdk.controlplane_proc import ADMIN_TOKEN, REPO, Process, start_controlplane
from tests.support.processes import Proc, spawn, wait_for_line

RAW_NATIVE_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+", re.MULTILINE)


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port held by a listening socket with SO_REUSEPORT, as a gRPC server holds it."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


def _run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "forklane", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=timeout, check=False)  # fmt: skip


def _one_line(stderr: str) -> str:
    """The error, one line (timestamped log lines written before it are the log)."""
    log_line = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
    lines = [line for line in stderr.splitlines() if line.strip() and not log_line.match(line)]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_proxy_port_in_use_is_one_line_and_exit_2(held_port: int, tmp_path: Path) -> None:
    done = _run("proxy", "run", "--config", str(REPO / "examples" / "static.yaml"),
                "--port", str(held_port), "--admin-port", "off")  # fmt: skip
    assert done.returncode == 2, done.stderr
    line = _one_line(done.stderr)
    assert f"127.0.0.1:{held_port}" in line and "already in use" in line


@pytest.mark.parametrize("which", ["grpc", "listen"])
def test_controlplane_refuses_a_port_another_process_holds(
    which: str, held_port: int, tmp_path: Path
) -> None:
    other = "listen" if which == "grpc" else "grpc"
    done = _run("controlplane", "serve", f"--{which}", f"127.0.0.1:{held_port}",
                f"--{other}", "127.0.0.1:0", "--data-dir", str(tmp_path))  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    line = _one_line(done.stderr)
    assert f"127.0.0.1:{held_port}" in line and "already in use" in line
    assert f"--{which}" in line
    assert "listening on" not in done.stdout


def _grpc_address(plane: Process) -> str:
    for line in plane.lines:
        found = re.search(r"\(grpc (127\.0\.0\.1:\d+),", line)
        if found:
            return found.group(1)
    raise AssertionError("no grpc address in the banner")


def _start(tmp_path: Path, min_ping: float, keepalive: float) -> tuple[Process, Proc]:
    plane = start_controlplane(tmp_path / "cp", {"FORKLANE_GRPC_MIN_PING_INTERVAL": str(min_ping)})
    try:
        proxy = spawn(
            [sys.executable, "-m", "forklane.proxy", "run", "--controlplane", _grpc_address(plane),
             "--controlplane-keepalive", str(keepalive), "--port", "0", "--admin-port", "off",
             "--node-id", "ka-proxy"],
            tmp_path / "proxy.log", env={"FORKLANE_CONTROLPLANE_TOKEN": ADMIN_TOKEN},
        )  # fmt: skip
        wait_for_line(proxy, "applied and ACKed snapshot", 20)
    except BaseException:
        plane.stop()
        raise
    return plane, proxy


def _connected_at(plane: Process) -> list[str]:
    r = httpx.get(f"{plane.url}/api/v1/proxies",
                  headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=5)  # fmt: skip
    return [p["connectedAt"] for p in r.json()["items"]]


@pytest.mark.slow
def test_keepalive_that_agrees_keeps_the_stream_up(tmp_path: Path) -> None:
    keepalive = 0.3
    plane, proxy = _start(tmp_path, min_ping=0.1, keepalive=keepalive)
    try:
        first = _connected_at(plane)
        assert len(first) == 1
        # Hold the invariant for 15 keepalive periods: five times what the mismatch below
        # needs to end the stream.
        deadline = time.monotonic() + 15 * keepalive
        while time.monotonic() < deadline:
            assert _connected_at(plane) == first, proxy.output()
            assert "too_many_pings" not in proxy.output()
            time.sleep(0.1)  # polling the invariant, bounded by the deadline
        assert "retrying" not in proxy.output()
    finally:
        proxy.stop()
        plane.stop()


@pytest.mark.slow
def test_keepalive_that_disagrees_is_refused_and_grpc_logs_in_our_format(tmp_path: Path) -> None:
    plane, proxy = _start(tmp_path, min_ping=30, keepalive=0.3)
    try:
        line = wait_for_line(proxy, "too_many_pings", 30)
        # forklane's format: "<date> <time>,<ms> LEVEL message", the C-core source named
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (ERROR|INFO) chttp2_transport", line), line
        assert not RAW_NATIVE_LINE.search(proxy.output()), proxy.output()
    finally:
        proxy.stop()
        plane.stop()
