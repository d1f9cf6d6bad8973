"""`forklane demo` end to end, as a new user runs it: one command, real processes.

What a user notices: it exits 0 and shows the fork (pricing v2) only for requests that carry
the routing key; it leaves no process behind when it finishes, fails or is interrupted.
Every process the demo starts inherits a marker variable from the test's environment, so
the test finds them all in /proc (by PID) whatever their parent, and kills stragglers.
"""

from __future__ import annotations

import os
import queue
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from forklane.demo._supervisor import DemoFailed, Supervisor

REPO = Path(__file__).resolve().parents[2]
MARKER_VAR = "DEMO_E2E_MARKER"

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/environ").exists(), reason="finds the demo's processes through /proc"
)


def forklane_cmd() -> list[str]:
    script = Path(sys.executable).parent / "forklane"
    return [str(script)] if script.exists() else [sys.executable, "-m", "forklane"]


def marked_pids(marker: str) -> set[int]:
    """PIDs of live processes whose environment holds the marker (zombies have none)."""
    needle = f"{MARKER_VAR}={marker}".encode()
    pids: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            pids.add(int(entry.name))
    return pids


@dataclass
class Demo:
    """A running `forklane demo` whose stdout is read line by line on a thread."""

    popen: subprocess.Popen[str]
    marker: str
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    seen: list[str] = field(default_factory=list)

    def wait_for(self, text: str, within: float = 30.0) -> str:
        deadline = time.monotonic() + within
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"no {text!r} within {within}s:\n{''.join(self.seen)}"
                ) from None
            if line is None:
                raise AssertionError(f"demo ended before {text!r}:\n{''.join(self.seen)}")
            self.seen.append(line)
            if text in line:
                return line

    def finish(self, within: float = 30.0) -> tuple[int, str, str]:
        code = self.popen.wait(within)
        while (line := self.lines.get(timeout=within)) is not None:
            self.seen.append(line)
        assert self.popen.stderr is not None
        return code, "".join(self.seen), self.popen.stderr.read()


StartDemo = Callable[..., Demo]


@pytest.fixture
def start_demo(tmp_path: Path) -> Iterator[StartDemo]:
    started: list[Demo] = []
    readers: list[threading.Thread] = []

    def start(*args: str) -> Demo:
        marker = secrets.token_hex(8)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FORKLANE_")}
        env.update({MARKER_VAR: marker, "HOME": str(tmp_path), "PYTHONPATH": str(REPO),
                    "COLUMNS": "120"})  # fmt: skip
        popen = subprocess.Popen(
            [*forklane_cmd(), "demo", *args], cwd=REPO, env=env, text=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        demo = Demo(popen, marker)

        def pump() -> None:
            assert popen.stdout is not None
            for line in popen.stdout:
                demo.lines.put(line)
            demo.lines.put(None)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        started.append(demo)
        readers.append(reader)
        return demo

    yield start
    for demo in started:  # a failed test must not leave the stack running either
        if demo.popen.poll() is None:
            demo.popen.kill()
            demo.popen.wait()
        for pid in marked_pids(demo.marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for reader in readers:
        reader.join(10)
    for demo in started:
        for pipe in (demo.popen.stdout, demo.popen.stderr):
            if pipe is not None:
                pipe.close()


def assert_nothing_left(demo: Demo, within: float = 5.0) -> None:
    """The demo's processes are gone (a reaped child may take a moment to leave /proc)."""
    deadline = time.monotonic() + within
    while (left := marked_pids(demo.marker)) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling /proc for processes to disappear, with a deadline
    assert not left, f"processes left behind: {left}"


REQUEST = re.compile(r"^request (\d+) \((no key|key \S+)\)\s+(.*)$")


@pytest.mark.slow
def test_demo_shows_the_fork_only_for_requests_with_the_key(start_demo: StartDemo) -> None:
    demo = start_demo("--requests", "4")
    code, out, err = demo.finish(60)
    assert code == 0, f"{out}\n{err}"
    assert err == ""
    rows = [m for line in out.splitlines() if (m := REQUEST.match(line))]
    assert [int(m.group(1)) for m in rows] == [1, 2, 3, 4]
    for m in rows:
        path = m.group(3)
        assert path.startswith("frontend v1 → catalog v1 → pricing v")
        if m.group(2) == "no key":
            assert "pricing v1" in path and "pricing v2" not in path and "100.00" in path
        else:
            assert "pricing v2" in path and "pricing v1" not in path and "80.00" in path
            assert "← your fork" in path
    assert "x-forklane-routing-key" in out  # the explanation names the header to send
    assert_nothing_left(demo)


@pytest.mark.slow
def test_ctrl_c_while_starting_leaves_nothing_behind(start_demo: StartDemo) -> None:
    demo = start_demo()
    demo.wait_for("✓ control plane")
    assert len(marked_pids(demo.marker)) >= 5  # the stack is up: the check below means something
    demo.popen.send_signal(signal.SIGINT)
    code, out, err = demo.finish(30)
    assert code == 130, f"{out}\n{err}"
    assert "Traceback" not in err
    assert re.search(r"^interrupted: stopped all \d+ processes$", out, re.M), out
    assert "request 1" not in out
    assert_nothing_left(demo)


@pytest.mark.slow
def test_keep_serves_until_ctrl_c_then_stops_everything(start_demo: StartDemo) -> None:
    import httpx

    demo = start_demo("--keep", "--requests", "2")
    curl = demo.wait_for("curl -H")
    demo.wait_for("Press Ctrl-C")
    header, url = re.findall(r"'([^']+)'\s+(\S+)", curl)[0]
    name, _, key = header.partition(": ")
    # the stack is still running and answers as printed: the fork with the key only
    assert httpx.get(url, headers={name: key}, timeout=5).json()["hops"][-1]["version"] == "v2"
    assert httpx.get(url, timeout=5).json()["hops"][-1]["version"] == "v1"
    assert len(marked_pids(demo.marker)) >= 8
    demo.popen.send_signal(signal.SIGINT)
    code, out, err = demo.finish(30)
    assert code == 0, f"{out}\n{err}"
    assert "stopped all 8 processes" in out
    assert_nothing_left(demo)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signal is Linux-only")
def test_even_a_killed_demo_leaves_nothing_behind(start_demo: StartDemo) -> None:
    demo = start_demo()
    demo.wait_for("✓ services")
    assert len(marked_pids(demo.marker)) >= 8
    demo.popen.kill()  # no cleanup code runs: only the kernel's parent-death signal is left
    demo.popen.wait(10)
    assert_nothing_left(demo)


def test_too_few_requests_is_a_usage_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORKLANE_")}
    env.update(HOME=str(tmp_path), PYTHONPATH=str(REPO))
    done = subprocess.run(
        [*forklane_cmd(), "demo", "--requests", "1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--requests" in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""  # nothing was started


# --- the process owner itself: what makes the guarantees above hold ---------------------------


def test_supervisor_reports_a_child_that_exits_before_it_is_ready(tmp_path: Path) -> None:
    with Supervisor(tmp_path, dict(os.environ)) as sup:
        child = sup.spawn("broken", ["-c", "import sys; print('bad flag --x'); sys.exit(2)"])
        with pytest.raises(DemoFailed, match=r"^broken exited with code 2: bad flag --x$"):
            sup.wait_lines({child: re.compile("ready")}, within=10)


def test_supervisor_kills_a_group_that_ignores_sigterm(tmp_path: Path) -> None:
    """A child that ignores SIGTERM, with a grandchild: both gone after the grace period,
    and a child that never says it is ready is reported by name at the deadline."""
    code = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print('grandchild', g.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    with Supervisor(tmp_path, dict(os.environ), grace=0.5) as sup:
        child = sup.spawn("stubborn", ["-c", code])
        found = sup.wait_lines({child: re.compile(r"grandchild (\d+)")}, within=10)
        grandchild = int(found[child].group(1))
        with pytest.raises(DemoFailed, match=r"^stubborn did not come up within 0.2s$"):
            sup.wait_lines({child: re.compile("never printed")}, within=0.2)
        started = time.monotonic()
    assert time.monotonic() - started < 5
    assert sup.stopped == 1
    assert child.popen.returncode == -signal.SIGKILL
    # SIG_IGN is inherited, so only the group's SIGKILL ends the grandchild
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.02)  # polling /proc until the kernel finishes the kill, with a deadline
    assert not _alive(grandchild)


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        return not Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (OSError, IndexError):
        return False
