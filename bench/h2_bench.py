"""HTTP/2 / gRPC benchmark: forklane against direct calls and nginx `grpc_pass`.

    .venv/bin/python bench/h2_bench.py [--requests 40000] [--repeat 3] [--profile]

Not a test: it prints a table from one run. Every path carries the same request (a gRPC
unary POST with a routing key that forks the service) to the same fast upstream (nginx, h2c,
one worker, a fixed answer with a `grpc-status: 0` trailer), driven by `h2load`:

    direct     h2load -> upstream
    nginx      h2load -> nginx grpc_pass, routing on the key header (1 worker) -> upstream
    forklane   h2load -> forklane (1 process) -> upstream

Throughput is closed-loop (`--conns` connections x `--streams` streams each), the median of
`--repeat` runs, the paths interleaved within each repetition so a change in the machine's
other load hits them alike. Two more calls put flow control in the figures: a server-streaming
call (1,000 messages of 1 KiB in one response) and a unary call answered with one 10 MiB
message, reported as messages/s and MiB/s. Added latency is measured open-loop at `--rate`
calls/s (an h2load timing script, one call per interval) and reported as p50/p99 minus the
direct path's; the proxy's CPU time during that run (its process and children, from /proc)
gives the cores it uses at that rate, and its CPU time per call (user + kernel). `--profile`
samples forklane with py-spy during a second throughput run and prints where the time goes.

`--callgrind N` measures what load cannot move instead: forklane runs under
`valgrind --tool=callgrind`, and after a warm-up the instructions it executes for N unary
calls are counted (counters zeroed before, dumped after) and divided by N, once with one call
at a time (1 connection, 1 stream: what a call costs at 1,000 calls/s) and once closed loop
(`--conns` x `--streams`: batched reads and writes). User space only: the kernel's share of the
reads and writes comes on top. Repeatable to about 1 % whatever else the machine runs; the
dumps stay in the run folder for `callgrind_annotate`.

    .venv/bin/python bench/h2_bench.py --callgrind 2000
    .venv/bin/python bench/h2_bench.py --callgrind 2000 --forklane-args "--hot-path interpreted"

Needs: nginx with the HTTP/2 and gRPC modules, h2load (Debian: nginx-light, nghttp2-client);
py-spy (PyPI) for --profile; valgrind (Debian) for --callgrind.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-1"
PAYLOAD = b"\x00\x00\x00\x00\x0c" + b"hello-bench!"  # one length-prefixed gRPC message
STREAM_MESSAGES = 1000
MESSAGE = b"\x00" + (1024).to_bytes(4, "big") + b"m" * 1024  # 1 KiB, length-prefixed
BIG = 10 * 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process {proc.args!r} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)  # startup poll with a deadline
    raise SystemExit(f"nothing listens on {port} after {timeout}s")


def render(template: str, run: Path, out: str, **values: object) -> Path:
    text = (ROOT / "bench" / template).read_text()
    values = {"RUN": run, "USER": "user root;" if os.geteuid() == 0 else "", **values}
    for name, value in values.items():
        text = text.replace(f"@{name}@", str(value))
    path = run / out
    path.write_text(text)
    return path


def start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT,
                                start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def h2load(port: int, extra: list[str], run: Path, path: str = "/bench.Echo/Unary") -> str:
    cmd = [
        "h2load", *extra, "-d", str(run / "payload.bin"),
        "-H", "content-type: application/grpc", "-H", "te: trailers",
        "-H", f"x-forklane-routing-key: {KEY}", "-H", ":authority: greeter",
        f"http://127.0.0.1:{port}{path}",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"h2load failed: {out.stdout}\n{out.stderr}")
    return out.stdout


def throughput(port: int, args: argparse.Namespace, run: Path, path: str = "/bench.Echo/Unary",
               requests: int = 0, conns: int = 0, streams: int = 0) -> tuple[float, int]:
    """Closed loop: calls/s and how many calls did not end in a 2xx."""
    n = requests or args.requests
    text = h2load(port, ["-n", str(n), "-c", str(conns or args.conns),
                         "-m", str(streams or args.streams)], run, path)
    rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text)
    status = re.search(r"status codes: (\d+) 2xx", text)
    if rps is None or status is None:
        raise SystemExit(f"unexpected h2load output for port {port}:\n{text}")
    return float(rps.group(1)), n - int(status.group(1))


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of `pid` and its children (nginx: the master and its worker)."""
    if pid is None:
        return 0.0
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    pids += [int(c) for c in children]
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def runqueue_wait(pid: int | None) -> float:
    """Seconds `pid` (and its children) spent runnable but waiting for a CPU
    (/proc/PID/schedstat): how much of a latency tail is the machine's other load."""
    if pid is None:
        return 0.0
    pids = [pid]
    try:
        pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    total = 0
    for p in pids:
        try:
            total += int(Path(f"/proc/{p}/schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def latency(port: int, args: argparse.Namespace, run: Path, name: str,
            pid: int | None) -> tuple[float, float, float, float]:
    """Open loop at args.rate calls/s: p50 and p99 in microseconds, the cores `pid` used and
    the share of the run it spent waiting for a CPU."""
    n = int(args.rate * args.seconds)
    interval = 1000.0 / args.rate
    script = run / "timing.txt"
    uri = f"http://127.0.0.1:{port}/bench.Echo/Unary"
    script.write_text("".join(f"{i * interval:.3f}\t{uri}\n" for i in range(n)))
    log = run / f"latency-{name}.log"
    cpu0, wait0, wall0 = cpu_seconds(pid), runqueue_wait(pid), time.monotonic()
    h2load(port, ["-c", "1", "-m", "100", "--timing-script-file", str(script),
                  "--log-file", str(log)], run)
    wall = time.monotonic() - wall0
    cores = (cpu_seconds(pid) - cpu0) / wall
    waited = (runqueue_wait(pid) - wait0) / wall
    samples = sorted(int(line.split("\t")[2]) for line in log.read_text().splitlines() if line)
    if len(samples) != n:
        raise SystemExit(f"{name}: {len(samples)} of {n} calls logged")
    return samples[len(samples) // 2] / 1.0, samples[int(len(samples) * 0.99)] / 1.0, cores, waited


def callgrind_control(pid: int, action: str, dump: Path) -> int:
    """Zero (`-z`) or dump (`-d`) the counters of a process under callgrind; after a dump,
    the instructions counted since the last zeroing (from the new dump file)."""
    before = set(dump.parent.glob(dump.name + "*"))
    subprocess.run(["callgrind_control", action, str(pid)], check=True, capture_output=True)
    if action != "-d":
        return 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for path in set(dump.parent.glob(dump.name + "*")) - before:
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith(("totals:", "summary:")):
                    return int(line.split()[1])
        time.sleep(0.2)  # valgrind writes the dump file asynchronously: poll with a deadline
    raise SystemExit("callgrind wrote no dump within 120 s")


def instructions(port: int, pid: int, args: argparse.Namespace, run: Path,
                 dump: Path) -> list[tuple[str, float]]:
    """Instructions per unary call, one call at a time and closed loop (see the docstring)."""
    n = args.callgrind
    shapes = [("1 connection x 1 stream", 1, 1),
              (f"{args.conns} connections x {args.streams} streams", args.conns, args.streams)]
    out: list[tuple[str, float]] = []
    for label, conns, streams in shapes:
        throughput(port, args, run, requests=200, conns=conns, streams=streams)  # warm-up
        callgrind_control(pid, "-z", dump)
        _, failed = throughput(port, args, run, requests=n, conns=conns, streams=streams)
        counted = callgrind_control(pid, "-d", dump)
        if failed:
            raise SystemExit(f"{failed} of {n} calls did not end in a 2xx under callgrind")
        out.append((label, counted / n))
    return out


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def print_profile(collapsed: Path, top: int = 30) -> None:
    """Own time and inclusive time per function from py-spy's collapsed stacks."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        n = int(count)
        total += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            incl[frame] = incl.get(frame, 0) + n
    print(f"\nforklane profile (py-spy, {total} samples): own time")
    for frame, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{100 * n / total:6.1f}%  {frame}")
    print("\ninclusive time")
    for frame, n in sorted(incl.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{100 * n / total:6.1f}%  {frame}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=40_000)
    p.add_argument("--conns", type=int, default=4)
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--repeat", type=int, default=3, help="throughput runs per path (median)")
    p.add_argument("--stream-calls", type=int, default=200,
                   help="server-streaming calls per throughput run (1,000 x 1 KiB each)")
    p.add_argument("--big-calls", type=int, default=30,
                   help="10 MiB unary calls per throughput run")
    p.add_argument("--rate", type=int, default=1000, help="calls/s of the latency run")
    p.add_argument("--seconds", type=float, default=5.0, help="length of the latency run")
    p.add_argument("--profile", action="store_true", help="py-spy forklane under load")
    p.add_argument("--callgrind", type=int, default=0, metavar="N",
                   help="only count forklane's instructions per call under callgrind, over N "
                        "calls per shape (needs valgrind)")
    p.add_argument("--forklane-args", default="", help="extra flags for `proxy run`")
    p.add_argument("--paths", default="direct,nginx,forklane",
                   help="which paths to run (direct is always the latency reference)")
    args = p.parse_args()
    for tool in ("nginx", "h2load", *(("valgrind", "callgrind_control") if args.callgrind else ())):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found (Debian: nginx-light, nghttp2-client, valgrind)")
    run = Path(tempfile.mkdtemp(prefix="forklane-h2bench-"))
    (run / "tmp").mkdir()
    (run / "payload.bin").write_bytes(PAYLOAD)
    (run / "stream.bin").write_bytes(MESSAGE * STREAM_MESSAGES)
    (run / "big.bin").write_bytes(b"\x00" + BIG.to_bytes(4, "big") + b"b" * BIG)
    base_port, fork_port, nginx_port, fl_port = (free_port() for _ in range(4))
    ports = {"BASELINE_PORT": base_port, "FORK_PORT": fork_port, "NGINX_PORT": nginx_port,
             "KEY": KEY}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        up_conf = render("nginx-h2-upstream.conf.tmpl", run, "upstream.conf", **ports)
        up = start(["nginx", "-p", str(run), "-e", str(run / "upstream.error.log"),
                    "-c", str(up_conf)], run / "upstream.out")
        procs.append(up)
        wait_port(base_port, up)
        wait_port(fork_port, up)
        ng_conf = render("nginx-grpc.conf.tmpl", run, "grpc.conf", **ports)
        ng = start(["nginx", "-p", str(run), "-e", str(run / "grpc-proxy.error.log"),
                    "-c", str(ng_conf)], run / "grpc.out")
        procs.append(ng)
        wait_port(nginx_port, ng)
        routing = run / "routing.yaml"
        routing.write_text(
            "version: bench\n"
            "services:\n"
            f"  - name: greeter\n    endpoints: ['127.0.0.1:{base_port}']\n"
            "forks:\n"
            f"  - routing_key: {KEY}\n    service: greeter\n"
            f"    endpoints: ['127.0.0.1:{fork_port}']\n"
        )

        def forklane(wrap: list[str]) -> subprocess.Popen[bytes]:
            cmd = [*wrap, sys.executable, "-m", "forklane.proxy", "run", "--config", str(routing),
                   "--port", str(fl_port), "--admin-port", "off", "--inbound-port", "off",
                   *args.forklane_args.split()]
            proc = start(cmd, run / "forklane.out")
            wait_port(fl_port, proc, timeout=600 if wrap else 20)
            return proc

        if args.callgrind:
            dump = run / "callgrind.out"
            fl = forklane(["valgrind", "--tool=callgrind", f"--callgrind-out-file={dump}"])
            procs.append(fl)
            counts = instructions(fl_port, fl.pid, args, run, dump)
            mode = "interpreted" if "interpreted" in args.forklane_args else "default build"
            print(f"\nforklane instructions per gRPC unary call (callgrind, {args.callgrind} "
                  f"calls per shape, {mode}; user space only)")
            for label, per_call in counts:
                print(f"{label:<32}{per_call:>12,.0f}")
            print(f"(dumps in {run}: callgrind_annotate {dump}.<pid>.<n>)")
            return 0

        fl = forklane([])
        procs.append(fl)
        targets = {"direct": fork_port, "nginx grpc_pass": nginx_port, "forklane": fl_port}
        pids: dict[str, int | None] = {"direct": None, "nginx grpc_pass": ng.pid,
                                       "forklane": fl.pid}
        wanted = set(args.paths.split(",")) | {"direct"}
        targets = {k: v for k, v in targets.items() if k.split()[0] in wanted}
        for port in targets.values():  # warm-up: connections, pools, caches
            throughput(port, argparse.Namespace(**{**vars(args), "requests": 2000}), run)
            throughput(port, args, run, "/bench.Echo/Stream", 4, 1, 1)
        runs: dict[str, dict[str, list[float]]] = {
            name: {"rps": [], "failed": [], "stream": [], "big": []} for name in targets}
        for _ in range(args.repeat):
            for name, port in targets.items():
                rps, failed = throughput(port, args, run)
                srps, sfailed = throughput(port, args, run, "/bench.Echo/Stream",
                                           args.stream_calls, 2, 2)
                brps, bfailed = throughput(port, args, run, "/bench.Echo/Big",
                                           args.big_calls, 1, 2)
                runs[name]["rps"].append(rps)
                runs[name]["failed"].append(failed + sfailed + bfailed)
                runs[name]["stream"].append(srps)
                runs[name]["big"].append(brps)
        results: dict[str, tuple[float, int, float, float, float, float, float]] = {}
        waits: dict[str, float] = {}
        for name, port in targets.items():
            p50, p99, cores, waits[name] = latency(port, args, run, name.split()[0], pids[name])
            r = runs[name]
            results[name] = (median(r["rps"]), int(max(r["failed"])), p50, p99, cores,
                             median(r["stream"]), median(r["big"]))
        stop(fl)
        procs.remove(fl)
        prof = None
        if args.profile:
            prof = run / "forklane.collapsed"
            fl = forklane([])
            procs.append(fl)
            spy = start([str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(fl.pid), "--rate", "500",
                         "--format", "raw", "--nonblocking", "-o", str(prof)],
                        run / "py-spy.out")
            time.sleep(1.0)  # let py-spy attach before the load starts
            throughput(fl_port, args, run)
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
    finally:
        for proc in procs:
            stop(proc)
    ref = results.get("nginx grpc_pass", results["direct"])
    d50, d99 = results["direct"][2], results["direct"][3]
    print(f"\ngRPC unary, {args.requests} calls, {args.conns} connections x {args.streams} "
          f"streams, median of {args.repeat}; latency and cores open loop at {args.rate}/s "
          f"for {args.seconds:g}s")
    print(f"{'path':<17}{'calls/s':>10}{'vs nginx':>10}{'non-2xx':>9}{'p50 µs':>9}"
          f"{'p99 µs':>9}{'+p50 µs':>9}{'+p99 µs':>9}{'cores':>8}{'CPU µs':>8}{'waited':>8}")
    for name, (rps, failed, p50, p99, cores, _, _) in results.items():
        print(f"{name:<17}{rps:>10.0f}{rps / ref[0]:>10.2f}{failed:>9}{p50:>9.0f}"
              f"{p99:>9.0f}{p50 - d50:>9.0f}{p99 - d99:>9.0f}{cores:>8.3f}"
              f"{cores / args.rate * 1e6:>8.0f}{100 * waits[name]:>7.1f}%")
    print("(CPU µs: the proxy's CPU time per call; waited: share of the latency run it was "
          "runnable but had no CPU, the machine's other load)")
    mib = 1024 * 1024
    print(f"\nserver streaming ({STREAM_MESSAGES} x 1 KiB per call, 2 connections x 2 streams) "
          "and 10 MiB unary responses (1 connection x 2 streams), median of "
          f"{args.repeat}")
    print(f"{'path':<17}{'msgs/s':>10}{'MiB/s':>9}{'vs nginx':>10}{'10MiB/s':>9}"
          f"{'MiB/s':>9}{'vs nginx':>10}")
    for name, (_, _, _, _, _, srps, brps) in results.items():
        smib = srps * len(MESSAGE) * STREAM_MESSAGES / mib
        bmib = brps * (BIG + 5) / mib
        print(f"{name:<17}{srps * STREAM_MESSAGES:>10.0f}{smib:>9.1f}{srps / ref[5]:>10.2f}"
              f"{brps:>9.2f}{bmib:>9.1f}{brps / ref[6]:>10.2f}")
    if prof is not None:
        print_profile(prof)
    print(f"(files in {run})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
