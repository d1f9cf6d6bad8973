"""Start forklane components as real processes and stop them by PID.

`start_proxy()` runs `python -m forklane.proxy run …` with ports 0 and parses the ready line
(`forklane proxy listening: outbound=HOST:PORT inbound=… admin=…`) to learn the real ports.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
_READY = re.compile(r"(\w+)=127\.0\.0\.1:(\d+)")


@dataclass
class Proc:
    popen: subprocess.Popen[str]
    log: Path
    ports: dict[str, int] = field(default_factory=dict)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    @property
    def pid(self) -> int:
        return self.popen.pid

    def url(self, listener: str = "outbound") -> str:
        return f"http://127.0.0.1:{self.ports[listener]}"

    def stop(self, timeout: float = 10.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode

    def rss_peak_kb(self) -> int:
        with open(f"/proc/{self.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmHWM")


def wait_for_line(proc: Proc, marker: str, timeout: float) -> str:
    """Poll the process's output file until a line containing `marker` appears."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = proc.output()
        for line in text.splitlines():
            if marker in line:
                return line
        if proc.popen.poll() is not None:
            raise RuntimeError(f"process exited ({proc.popen.returncode}):\n{text}")
        time.sleep(0.02)  # polling a log file for readiness, with a deadline
    raise TimeoutError(f"no {marker!r} within {timeout}s:\n{proc.output()}")


def spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> Proc:
    """Start `cmd` with stdout and stderr going to `log` (a pipe could fill and block it)."""
    fh = open(log, "w")
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    popen = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, text=True,
                             env=full_env)
    fh.close()
    return Proc(popen, log=log)


def start_proxy(
    config: Path | None,
    log: Path,
    *args: str,
    env: dict[str, str] | None = None,
    inbound: bool = False,
) -> Proc:
    cmd = [sys.executable, "-m", "forklane.proxy", "run", "--port", "0", "--admin-port", "0"]
    if config is not None:
        cmd += ["--config", str(config)]
    if inbound:
        cmd += ["--inbound-port", "0"]
    cmd += list(args)
    proc = spawn(cmd, log, env)
    try:
        line = wait_for_line(proc, "forklane proxy listening", 20)
    except BaseException:
        proc.popen.kill()
        proc.popen.wait()
        raise
    proc.ports = {name: int(port) for name, port in _READY.findall(line)}
    return proc


def write_config(path: Path, doc: dict[str, object]) -> Path:
    """Write a routing file atomically (rename), as a config-management tool would."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    os.replace(tmp, path)
    return path
