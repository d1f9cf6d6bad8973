"""Real network namespaces for the capture tests: a "pod" and an "upstream" host joined by a
veth pair, processes inside them, and a clean-up that runs whatever happened.

Every address lives on the veth pair the test creates, in the benchmark range 198.18.0.0/15
and the documentation prefix 2001:db8::/32; the namespaces have no route anywhere else, so
nothing a test dials can leave them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.processes import Proc, spawn

POD_V4, UP_V4, FORK_V4, SERVICE_V4 = "198.18.0.1", "198.18.0.2", "198.18.0.3", "198.18.1.10"
POD_V6, UP_V6, SERVICE_V6 = "2001:db8::1", "2001:db8::2", "2001:db8::10"
APP_UID = 1000  # the app's clients run as this user; the sidecar runs as root (uid 0)
CLIENT_PY = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
_TOOLS = ("ip", "setpriv", "curl", "redis-server", "redis-cli", "openssl")


def skip_reason() -> str | None:
    """Why network-namespace tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces (CI runs as root)"
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if not (shutil.which("iptables-nft") or shutil.which("iptables-legacy")):
        missing.append("iptables")
    if missing:
        return (f"needs {', '.join(missing)} (Debian packages; `python3 scripts/dev.py setup` "
                f"installs them as root)")
    probe = f"flprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def wait_until(check: Callable[[], bool], within: float = 15.0, what: str = "condition") -> None:
    """Poll `check` (a process in another namespace) until true, or fail after `within` s."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {within} s")
        time.sleep(0.05)


@dataclass
class Netns:
    name: str
    procs: list[Proc] = field(default_factory=list)

    def argv(self, args: Sequence[str], user: int | None = None) -> list[str]:
        cmd = ["ip", "netns", "exec", self.name]
        if user is not None:
            cmd += ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"]
        return cmd + list(args)

    def run(self, *args: str, user: int | None = None, input: str | None = None,
            env: dict[str, str] | None = None, timeout: float = 30,
            check: bool = False) -> subprocess.CompletedProcess[str]:
        full_env = None if env is None else {**os.environ, **env}
        done = subprocess.run(self.argv(args, user), input=input, capture_output=True,
                              text=True, timeout=timeout, env=full_env)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(args)} in {self.name} failed ({done.returncode}):"
                                 f"\n{done.stdout}{done.stderr}")
        return done

    def spawn(self, args: Sequence[str], log: Path, user: int | None = None,
              env: dict[str, str] | None = None) -> Proc:
        proc = spawn(self.argv(args, user), log, env)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(timeout=5)
        self.procs.clear()

    def delete(self) -> None:
        self.stop_all()
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


def create(name: str) -> Netns:
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    ns = Netns(name)
    ns.run("ip", "link", "set", "lo", "up", check=True)
    return ns


@dataclass
class Topology:
    pod: Netns
    up: Netns

    def delete(self) -> None:
        self.pod.delete()
        self.up.delete()


def build(prefix: str) -> Topology:
    """Two namespaces joined by veth `eth0`<->`eth0`. The pod routes everything to the upstream
    host, which owns the baseline (.2), fork (.3) and Service (198.18.1.10) addresses."""
    pod = create(f"{prefix}-pod")
    try:
        up = create(f"{prefix}-up")
    except BaseException:
        pod.delete()
        raise
    topo = Topology(pod, up)
    try:
        subprocess.run(["ip", "-n", pod.name, "link", "add", "eth0", "type", "veth",
                        "peer", "name", "eth0", "netns", up.name], check=True,
                       capture_output=True)
        for ns, addrs in ((pod, [f"{POD_V4}/24"]),
                          (up, [f"{UP_V4}/24", f"{FORK_V4}/24", f"{SERVICE_V4}/32"])):
            for addr in addrs:
                ns.run("ip", "addr", "add", addr, "dev", "eth0", check=True)
        pod.run("ip", "-6", "addr", "add", f"{POD_V6}/64", "dev", "eth0", "nodad", check=True)
        up.run("ip", "-6", "addr", "add", f"{UP_V6}/64", "dev", "eth0", "nodad", check=True)
        up.run("ip", "-6", "addr", "add", f"{SERVICE_V6}/128", "dev", "eth0", "nodad",
               check=True)
        for ns in (pod, up):
            ns.run("ip", "link", "set", "eth0", "up", check=True)
        pod.run("ip", "route", "add", "default", "via", UP_V4, check=True)
        pod.run("ip", "-6", "route", "add", "default", "via", UP_V6, check=True)
    except BaseException:
        topo.delete()
        raise
    return topo
