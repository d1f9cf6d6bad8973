"""Start and stop a real forklane control plane (`python -m forklane.controlplane serve`) for tests.

Shared by the SDK tests and the CLI end-to-end tests. The control plane listens on port 0 with
a temporary data directory and the bootstrap admin token from `FORKLANE_ADMIN_TOKEN`; we wait
for its "listening on" line (no sleeping) and parse the URL from it.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "forklane-test-admin-token-0123456789"
LISTENING = re.compile(r"forklane controlplane listening on (http://\S+)")


@dataclass(frozen=True)
class ControlPlane:
    url: str
    token: str
    data_dir: Path


def controlplane_missing() -> str | None:
    """Why the control plane cannot be started from this tree, or None when it can."""
    if not (REPO / "controlplane" / "__main__.py").exists():
        return "the control plane has no `python -m forklane.controlplane` entry point in this tree yet"
    return None


@dataclass
class Process:
    """A running control plane: its process, URL and the thread draining its output."""

    proc: subprocess.Popen[str]
    url: str
    reader: threading.Thread
    lines: list[str]

    def stop(self) -> None:
        """SIGTERM, wait (kill after 15 s), then drain and close the output pipe."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.reader.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def start_controlplane(data_dir: Path, extra_env: dict[str, str] | None = None) -> Process:
    """Start on port 0 and return once it printed its "listening on" line."""
    env = {
        **os.environ,
        "FORKLANE_ADMIN_TOKEN": ADMIN_TOKEN,
        "PYTHONPATH": str(REPO),
        "FORKLANE_RECONCILE_INTERVAL": "0.2",
        **(extra_env or {}),
    }
    argv = [sys.executable, "-m", "forklane.controlplane", "serve", "--listen", "127.0.0.1:0",
            "--grpc", "127.0.0.1:0", "--data-dir", str(data_dir)]  # fmt: skip
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    found: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            match = LISTENING.search(line)
            if match and not found:
                found.append(match.group(1).rstrip("/"))
                ready.set()
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    ready.wait(timeout=30)
    running = Process(proc, found[0] if found else "", reader, lines)
    if not found:
        running.stop()
        raise RuntimeError("control plane did not start:\n" + "".join(lines[-30:]))
    return running


@contextmanager
def tcp_listener() -> Iterator[str]:
    """A reachable fork endpoint: accepts and closes every connection, so the control plane's
    reachability probes never fill an accept queue (which would make the fork look down)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)

    def accept_forever() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:  # the socket was closed: the fixture is done
                return
            conn.close()

    thread = threading.Thread(target=accept_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        thread.join(timeout=5)
