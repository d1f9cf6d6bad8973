"""Own the demo's child processes: start them, wait for their ready lines, stop them all.

Invariants:
- every child runs in its own session (so its own process group): a Ctrl-C in the terminal
  reaches only the demo, which then stops the children in order;
- `stop_all()` sends SIGTERM to each child's process group, waits up to a deadline, then
  SIGKILLs the group; it runs with SIGINT ignored, so a second Ctrl-C cannot cut it short;
- on Linux every child also gets SIGKILL when the demo dies without cleaning up
  (`PR_SET_PDEATHSIG`), so even `kill -9` of the demo leaves nothing running;
- output of each child goes to a log file, never a pipe that could fill and block it;
- waiting is polling with a deadline: a child that exits or stays silent is a `DemoFailed`
  naming it and the last line it wrote.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sdk.errors import ForklaneError

__all__ = ["Child", "DemoFailed", "Supervisor"]

_POLL = 0.02
_PR_SET_PDEATHSIG = 1


class DemoFailed(ForklaneError):
    """The demo could not do what it set out to do; the message is the one-line reason."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGKILL this child when the demo process dies."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


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
    """Starts children with a clean environment and guarantees they are all stopped."""

    def __init__(self, workdir: Path, env: Mapping[str, str]) -> None:
        self._workdir = workdir
        self._env = dict(env)
        self._children: list[Child] = []

    @property
    def children(self) -> Sequence[Child]:
        return tuple(self._children)

    def spawn(self, name: str, args: Sequence[str], *, stdin: bool = False) -> Child:
        """Start `python -m args...` as `name`; stdout and stderr go to `<workdir>/<name>.log`."""
        log = self._workdir / f"{name}.log"
        preexec: Callable[[], None] | None = _die_with_parent if sys.platform == "linux" else None
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                [sys.executable, *args],
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._env,
                start_new_session=True,
                preexec_fn=preexec,  # noqa: PLW1509 - the demo starts no threads of its own
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

    def stop_all(self, grace: float = 3.0) -> int:
        """SIGTERM every child's group, SIGKILL what is left after `grace` seconds.

        Returns how many children were stopped.
        """
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for child in self._children:
                if child.popen.stdin is not None:
                    with contextlib.suppress(OSError):
                        child.popen.stdin.close()
                _signal_group(child, signal.SIGTERM)
            deadline = time.monotonic() + grace
            for child in self._children:
                try:
                    child.popen.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    _signal_group(child, signal.SIGKILL)
                    child.popen.wait()
                # anything the child left in its group (workers, helpers) goes too
                _signal_group(child, signal.SIGKILL)
            count = len(self._children)
            self._children.clear()
            return count
        finally:
            signal.signal(signal.SIGINT, previous)


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

