"""Passthrough relay throughput against a direct connection, in real network namespaces.

    sudo .venv/bin/python bench/relay_bench.py            # 1 GiB per transfer, 3 runs each
    SIZE_MB=4096 RUNS=5 sudo .venv/bin/python bench/relay_bench.py

A "pod" namespace with the capture rules and the sidecar (uvloop, the same process the tests
run) and an "upstream" namespace with socat sinks and sources, joined by a veth pair. The same
bulk transfer runs twice from the pod: as root, which the rules exclude (a direct connection),
and as uid 1000, which they capture (through the sidecar's opaque relay). Both directions are
measured; the figure is the ratio relayed / direct of the best of RUNS, from one run of this
script on one machine (other load on the machine moves both numbers alike).

Needs root, iproute2, iptables and socat. Not part of the test suite.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import netns  # noqa: E402
from tests.support.netns import APP_UID, UP_V4  # noqa: E402
from tests.support.processes import wait_for_line  # noqa: E402

SIZE_MB = int(os.environ.get("SIZE_MB", "1024"))
RUNS = int(os.environ.get("RUNS", "3"))
UPLOAD_PORT, DOWNLOAD_PORT = 7101, 7102


BLOCK = "-b", "262144"  # socat's default 8 KiB blocks would be the bottleneck, not TCP


def transfer(pod: netns.Netns, user: int | None, direction: str, check: bool = False) -> float:
    """Seconds to move SIZE_MB MiB one way over one TCP connection (`check`: count them)."""
    size = SIZE_MB << 20
    if direction == "upload":
        args = ["socat", *BLOCK, "-u", f"OPEN:/dev/zero,readbytes={size}",
                f"TCP:{UP_V4}:{UPLOAD_PORT}"]
    elif check:
        args = ["sh", "-c", f"socat {' '.join(BLOCK)} -u TCP:{UP_V4}:{DOWNLOAD_PORT} - | wc -c"]
    else:
        args = ["socat", *BLOCK, "-u", f"TCP:{UP_V4}:{DOWNLOAD_PORT}", "OPEN:/dev/null"]
    started = time.perf_counter()
    done = pod.run(*args, user=user, timeout=600)
    elapsed = time.perf_counter() - started
    if done.returncode != 0 or (check and direction == "download" and int(done.stdout) != size):
        raise SystemExit(f"{direction} as uid {user or 0} failed: {done.stdout}{done.stderr}")
    return elapsed


def main() -> int:
    reason = netns.skip_reason()
    if reason or shutil.which("socat") is None:
        print(f"relay bench: cannot run here: {reason or 'needs socat'}", file=sys.stderr)
        return 2
    logs = Path(tempfile.mkdtemp(prefix="forklane-relay-bench-"))
    topo = netns.build(f"flb{os.getpid()}")
    try:
        up, pod = topo.up, topo.pod
        size = SIZE_MB << 20
        up.spawn(["socat", *BLOCK, "-u", f"TCP-LISTEN:{UPLOAD_PORT},reuseaddr,fork",
                  "OPEN:/dev/null"], logs / "sink.log")
        up.spawn(["socat", *BLOCK, "-U", f"TCP-LISTEN:{DOWNLOAD_PORT},reuseaddr,fork",
                  f"OPEN:/dev/zero,readbytes={size}"], logs / "source.log")
        netns.wait_until(lambda: str(DOWNLOAD_PORT) in up.run("ss", "-ltn").stdout,
                         what="socat listening")
        done = pod.run(sys.executable, "-m", "forklane.proxy", "capture", "--proxy-uid", "0")
        if done.returncode != 0:
            raise SystemExit(done.stderr)
        config = logs / "routing.yaml"
        config.write_text('version: "bench"\nservices: []\n')
        sidecar = pod.spawn([sys.executable, "-m", "forklane.proxy", "run", "--capture",
                             "--config", str(config), "--port", "15001", "--admin-port", "15000",
                             "--opaque-ports", f"{UPLOAD_PORT},{DOWNLOAD_PORT}"],
                            logs / "sidecar.log")
        wait_for_line(sidecar, "forklane proxy listening", 20)
        print(f"relay bench: {SIZE_MB} MiB per transfer, best of {RUNS}")
        for direction in ("upload", "download"):
            for user in (None, APP_UID):
                transfer(pod, user, direction, check=True)  # every byte arrives (untimed)
            direct = min(transfer(pod, None, direction) for _ in range(RUNS))
            relayed = min(transfer(pod, APP_UID, direction) for _ in range(RUNS))
            mb = SIZE_MB
            print(f"  {direction:<8} direct {mb / direct:7.0f} MiB/s   through the relay "
                  f"{mb / relayed:7.0f} MiB/s   relayed/direct {direct / relayed:.2f}")
        metrics = pod.run("curl", "-s", "http://127.0.0.1:15000/metrics").stdout
        relayed_lines = [line for line in metrics.splitlines()
                         if line.startswith("forklane_relay_connections_total")]
        print("  " + "\n  ".join(relayed_lines))
    finally:
        topo.delete()
        shutil.rmtree(logs, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
