"""gRPC's C-core writes its own log lines (`E1201 09:11:13.227170  17895 chttp2_transport.cc:1435]
…`) straight to file descriptor 2; `route_native_logs` sends them through Python logging
instead, so they come out in forklane's format, at their level, under the logger `grpc`.

How: fd 2 becomes a pipe read by one daemon thread; Python's own `sys.stderr` moves to a copy
of the original descriptor, so Python output (log handlers, tracebacks) never passes through
the pipe. A line that is not a C-core log line is written through unchanged.

Invariants:
- call it before logging is configured (handlers bind `sys.stderr` when they are made);
- nothing native ever blocks on stderr: the pipe's write end is non-blocking, so if the
  reader fell behind by a full pipe (64 KiB) native lines would be dropped, not wait;
- idempotent: a second call does nothing.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading

__all__ = ["parse_native_line", "route_native_logs"]

_NATIVE = re.compile(
    r"^(?P<level>[IWEF])\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ (?P<where>[^\]\s]+)\] (?P<text>.*)$"
)
_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}
# Sources whose failures forklane reports itself, in one line of its own (a bind that failed
# because the port is in use): their lines are kept at DEBUG so they do not say it twice.
_REPORTED_BY_US = ("add_port.cc:",)
_routed = False


def parse_native_line(line: str) -> tuple[int, str] | None:
    """(level, `file.cc:123: message`) of an absl/C-core log line, or None for other text."""
    found = _NATIVE.match(line)
    if found is None:
        return None
    level = _LEVELS[found["level"]]
    if found["where"].startswith(_REPORTED_BY_US):
        level = logging.DEBUG
    return level, f"{found['where']}: {found['text']}"


def _pump(read_fd: int, logger: logging.Logger) -> None:
    pending = b""
    while True:
        try:
            chunk = os.read(read_fd, 65536)
        except OSError:
            return
        if not chunk:
            return
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            text = raw.decode("utf-8", "replace").rstrip("\r")
            parsed = parse_native_line(text)
            if parsed is not None:
                logger.log(parsed[0], "%s", parsed[1])
            elif text:
                sys.stderr.write(text + "\n")
                sys.stderr.flush()


def route_native_logs(logger_name: str = "grpc") -> None:
    """Route native writes to fd 2 through the logger `logger_name` (see the module doc)."""
    global _routed
    if _routed:
        return
    _routed = True
    sys.stderr.flush()
    original = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    sys.stderr = open(original, "w", buffering=1, encoding="utf-8", errors="backslashreplace")
    threading.Thread(
        target=_pump, args=(read_fd, logging.getLogger(logger_name)), name="forklane-native-log",
        daemon=True,
    ).start()
