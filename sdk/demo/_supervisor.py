"""Own the demo's child processes: start them, wait for their ready lines, stop them all.

    with Supervisor(workdir, env) as sup:      # Ctrl-C, SIGTERM, SIGHUP: KeyboardInterrupt
        child = sup.spawn("catalog", ["-m", "forklane.demo.service", ...])
        sup.wait_lines({child: READY}, within=20)
    # every child and its process group is gone here, on every exit path

Invariants:
- every child runs in its own session (so its own process group): a Ctrl-C in the terminal
  reaches only the demo, which then stops the children;
- a child is recorded before a signal can interrupt the demo: `spawn` and `stop_all` run with
  SIGINT/SIGTERM/SIGHUP deferred (noted, raised as KeyboardInterrupt right after), so no
  interrupt lands between starting a process and owning it, or cuts the cleanup short;
- `stop_all()` sends SIGTERM to each child's group, waits up to a deadline, then SIGKILLs it;
- on Linux a child is started through a tiny launcher that sets `PR_SET_PDEATHSIG` before it
  execs the real program, so even `kill -9` of the demo leaves nothing running (no Python runs
  between fork and exec in the demo: it has threads, e.g. rich's spinner);
- output of each child goes to a log file, never a pipe that could fill and block it;
- waiting polls with a deadline: a child that exits or stays silent is a `DemoFailed` naming
  it and the last line it wrote.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType

from forklane.errors import ForklaneError

__all__ = ["Child", "DemoFailed", "Supervisor"]

_POLL = 0.02
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Runs as `python -I -S -c LAUNCHER DEMO_PID ARGS...`: ask Linux to SIGKILL this process when
# the demo dies (prctl 1 = PR_SET_PDEATHSIG, 9 = SIGKILL; kept across exec), give up if the
# demo is already gone, then become `python ARGS...` with the same pid.
_LAUNCHER = (
    "import ctypes,os,sys\n"
    "ctypes.CDLL(None).prctl(1,9,0,0,0)\n"
    "os.getppid()==int(sys.argv[1]) or sys.exit(1)\n"
    "os.execv(sys.executable,[sys.executable,*sys.argv[2:]])\n"
)


class DemoFailed(ForklaneError):
    """The demo could not do what it set out to do; the message is the one-line reason."""


@dataclass(eq=False)  # identity: children are dict keys while waiting
class Child:
    """One started process: its name in messages, the Popen, its log file and stdin pipe."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def last_line(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1].strip() if lines else ""

    def send(self, line: str) -> None:
        """Write one line to the child's stdin (the demo services read their upstream here)."""
        stdin = self.popen.stdin
        if stdin is None:
            raise DemoFailed(f"{self.name}: started without a stdin pipe")
        try:
            stdin.write(line.encode() + b"\n")
            stdin.flush()
        except OSError as exc:
            raise DemoFailed(f"{self.name} exited early: {self.last_line() or exc}") from exc


class Supervisor:
    """Starts children with a given environment and guarantees they are all stopped."""

    def __init__(self, workdir: Path, env: Mapping[str, str], grace: float = 3.0) -> None:
        self._workdir = workdir
        self._env = dict(env)
        self._grace = grace
        self._children: list[Child] = []
        self.stopped = 0  # children stopped so far, for the closing line
        self._deferring = False
        self._pending: int | None = None
        self._previous: dict[int, object] = {}

    # -- signals ---------------------------------------------------------------------------

    def __enter__(self) -> Supervisor:
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.stop_all()
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)  # type: ignore[arg-type]
            self._previous.clear()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._deferring:
            self._pending = signum
            return
        raise KeyboardInterrupt(signal.Signals(signum).name)

    @contextlib.contextmanager
    def _deferred(self) -> Iterator[None]:
        """Hold signals while the block runs; raise the one that came, once it is done."""
        outer = self._deferring
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = outer
        if not outer and self._pending is not None:
            signum, self._pending = self._pending, None
            raise KeyboardInterrupt(signal.Signals(signum).name)

    # -- children --------------------------------------------------------------------------

    @property
    def children(self) -> Sequence[Child]:
        return tuple(self._children)

    def spawn(self, name: str, args: Sequence[str], *, stdin: bool = False) -> Child:
        """Start `python args...` as `name`; stdout and stderr go to `<workdir>/<name>.log`."""
        log = self._workdir / f"{name}.log"
        argv = [sys.executable, *args]
        if sys.platform == "linux":
            argv = [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(os.getpid()), *args]
        with self._deferred(), open(log, "wb") as out:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._env,
                start_new_session=True,
            )
            child = Child(name, popen, log)
            self._children.append(child)
        return child

    def wait_lines(
        self, wanted: Mapping[Child, re.Pattern[str]], within: float
    ) -> dict[Child, re.Match[str]]:
        """Wait until each child printed a line matching its pattern (all in parallel)."""
        deadline = time.monotonic() + within
        found: dict[Child, re.Match[str]] = {}
        while True:
            for child, pattern in wanted.items():
                if child in found:
                    continue
                match = _search(child.log, pattern)
                if match is not None:
                    found[child] = match
                elif child.popen.poll() is not None:
                    raise DemoFailed(
                        f"{child.name} exited with code {child.popen.returncode}: "
                        f"{child.last_line() or 'no output'}"
                    )
            if len(found) == len(wanted):
                return found
            if time.monotonic() > deadline:
                late = ", ".join(c.name for c in wanted if c not in found)
                raise DemoFailed(f"{late} did not come up within {within:g}s")
            time.sleep(_POLL)  # polling files for ready lines, bounded by the deadline

    def stop_all(self) -> int:
        """SIGTERM every child's group, SIGKILL what is left after the grace period.

        Returns how many children were stopped. Signals are held until it is done.
        """
        with self._deferred():
            for child in self._children:
                if child.popen.stdin is not None:
                    with contextlib.suppress(OSError):
                        child.popen.stdin.close()
                _signal_group(child, signal.SIGTERM)
            deadline = time.monotonic() + self._grace
            for child in self._children:
                try:
                    child.popen.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    _signal_group(child, signal.SIGKILL)
                    child.popen.wait()
                # anything the child left in its group (workers, helpers) goes too
                _signal_group(child, signal.SIGKILL)
            count = len(self._children)
            self.stopped += count
            self._children.clear()
        return count


def _signal_group(child: Child, sig: signal.Signals) -> None:
    # The child leads its own group (start_new_session), so its pid is the group id; the id
    # cannot be reused while any process of the group is alive.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, sig)


def _search(log: Path, pattern: re.Pattern[str]) -> re.Match[str] | None:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    return pattern.search(text)
