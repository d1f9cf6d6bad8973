"""Traffic capture for real: nat rules from `forklane proxy capture` in a "pod" network
namespace, the sidecar beside an app there, upstreams in another namespace.

The sidecar runs as root (uid 0) and the rules exclude uid 0 (`--proxy-uid 0`); the app's
clients (curl, redis-cli, a raw TCP client) run as uid 1000, so exactly their connections are
captured. Root's own curl in the pod is the control: not captured, it reaches the Service
address directly. Needs root, iproute2 and iptables (skipped with the reason otherwise).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import netns
from tests.support.netns import (
    APP_UID,
    CLIENT_PY,
    FORK_V4,
    POD_V4,
    SERVICE_V4,
    SERVICE_V6,
    UP_V4,
    UP_V6,
    Netns,
    Topology,
    wait_until,
)
from tests.support.processes import ROOT, Proc, wait_for_line

pytestmark = pytest.mark.slow

NSCLIENT_SOURCE = ROOT / "tests" / "support" / "nsclient.py"
ROUTING: dict[str, Any] = {
    "version": "capture-netns",
    "services": [{
        "name": "catalog",
        "authorities": ["catalog.shop.svc.cluster.local", f"{SERVICE_V4}:80",
                        f"[{SERVICE_V6}]:80"],
        "endpoints": [f"{UP_V4}:8080"],
    }],
    "forks": [{"routing_key": "alice", "service": "catalog",
               "endpoints": [f"{FORK_V4}:8080"], "sandbox": "alice"}],
}
DETECT_TIMEOUT = 0.5
_sidecars = itertools.count()


@dataclass
class Lab:
    topo: Topology
    files: Path  # world-readable: the app's clients (uid 1000) read the CA certificate here
    logs: Path

    @property
    def pod(self) -> Netns:
        return self.topo.pod

    @property
    def up(self) -> Netns:
        return self.topo.up


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = netns.skip_reason()
    if reason:
        pytest.skip(reason)
    files = Path(tempfile.mkdtemp(prefix="forklane-capture-"))
    files.chmod(0o755)
    # The app's clients run as another user, who may not be able to read the checkout (a
    # clone under a private directory): they run their own copy of the client script.
    shutil.copy(NSCLIENT_SOURCE, files / "nsclient.py")
    (files / "nsclient.py").chmod(0o644)
    logs = tmp_path_factory.mktemp("netns-logs")
    cert, key = files / "cert.pem", files / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=secure.test", "-addext", "subjectAltName=DNS:secure.test",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    cert.chmod(0o644)
    topo = netns.build(f"fl{os.getpid()}")
    try:
        servers = [sys.executable, "-m", "tests.support.nsservers",
                   "--http", f"{UP_V4}:8080=baseline", "--http", f"{FORK_V4}:8080=fork",
                   "--http", f"{SERVICE_V4}:80=direct", "--http", f"{UP_V4}:9000=other",
                   "--http", f"[{UP_V6}]:9000=other6", "--tls", f"{UP_V4}:8443=secure",
                   "--cert", str(cert), "--key", str(key),
                   "--banner", f"{UP_V4}:2525", "--echo", f"{UP_V4}:7000"]
        wait_for_line(topo.up.spawn(servers, logs / "up-servers.log"), "ready", 20)
        topo.up.spawn(["redis-server", "--bind", f"{UP_V4} {UP_V6}", "--port", "6379",
                       "--save", "", "--appendonly", "no", "--protected-mode", "no",
                       "--dir", str(files)], logs / "redis.log")
        wait_until(lambda: topo.up.run("redis-cli", "-h", UP_V4, "ping").stdout.strip()
                   == "PONG", what="redis-server up")
        app = [sys.executable, "-m", "tests.support.nsservers", "--http", "0.0.0.0:8080=app",
               "--echo", "0.0.0.0:9090"]
        wait_for_line(topo.pod.spawn(app, logs / "app.log"), "ready", 20)
        yield Lab(topo, files, logs)
    finally:
        topo.delete()
        shutil.rmtree(files, ignore_errors=True)


# -- the capture command and the sidecar ------------------------------------------------------

def capture(ns: Netns, *args: str, privileged: bool = True) -> subprocess.CompletedProcess[str]:
    """`forklane proxy capture` in `ns`; unprivileged: as root without NET_ADMIN and NET_RAW
    (dropped from the bounding set), which is what a container without them gets, and works
    wherever the checkout lives (another user might not be allowed to read it)."""
    drop = [] if privileged else ["setpriv", "--bounding-set=-net_admin,-net_raw",
                                  "--inh-caps=-net_admin,-net_raw"]
    return ns.run(*drop, sys.executable, "-m", "forklane.proxy", "capture", *args)


@dataclass
class Sidecar:
    lab: Lab
    proc: Proc

    def metrics(self) -> dict[str, float]:
        text = self.lab.pod.run("curl", "-s", "http://127.0.0.1:15000/metrics", check=True).stdout
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def metric(self, name: str) -> float:
        return self.metrics().get(name, 0.0)


def start_sidecar(lab: Lab, *extra: str, name: str = "sidecar") -> Sidecar:
    config = lab.logs / f"{name}.yaml"
    config.write_text(yaml.safe_dump(ROUTING))
    cmd = [sys.executable, "-m", "forklane.proxy", "run", "--config", str(config),
           "--port", "15001", "--inbound-port", "15006", "--admin-port", "15000",
           "--service", "app", "--local-app", "127.0.0.1:8080", *extra]
    proc = lab.pod.spawn(cmd, lab.logs / f"{name}.log")
    wait_for_line(proc, "forklane proxy listening", 20)
    return Sidecar(lab, proc)


@pytest.fixture
def sidecar_factory(lab: Lab) -> Iterator[Any]:
    """`sidecar_factory(capture_args, run_args)`: rules installed, sidecar started; both are
    removed after the test, whatever happened."""
    started: list[Proc] = []

    def make(capture_args: tuple[str, ...] = (), run_args: tuple[str, ...] = ("--capture",),
             install: bool = True) -> Sidecar:
        if install:
            done = capture(lab.pod, "--proxy-uid", "0", *capture_args)
            assert done.returncode == 0, done.stderr
        car = start_sidecar(lab, "--detect-timeout", str(DETECT_TIMEOUT), *run_args,
                            name=f"sidecar-{next(_sidecars)}")
        started.append(car.proc)
        return car

    yield make
    for proc in started:
        proc.stop()
        lab.pod.procs.remove(proc)
    capture(lab.pod, "--uninstall")


def app_curl(lab: Lab, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """curl as the app (captured); the JSON answer of the nsservers HTTP server."""
    done = lab.pod.run("curl", "-sS", "--max-time", "10", *args, user=APP_UID, env=env)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def header_lines(answer: dict[str, Any]) -> list[str]:
    return [line.lower() for line in answer["head"].split("\r\n")[1:] if line]


# -- the command itself ---------------------------------------------------------------------

@pytest.fixture
def scratch(lab: Lab) -> Iterator[Netns]:
    ns = netns.create(f"fl{os.getpid()}-s")
    yield ns
    ns.delete()


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_capture_is_idempotent_replaces_itself_and_leaves_other_rules(
    scratch: Netns, backend: str
) -> None:
    ipt = f"iptables-{backend}"
    for rule in (["-N", "OTHER"], ["-A", "OUTPUT", "-p", "tcp", "-d", "198.18.9.0/24",
                                   "-j", "OTHER"], ["-A", "OTHER", "-j", "RETURN"]):
        scratch.run(ipt, "-t", "nat", *rule, check=True)
    for _ in range(2):
        done = capture(scratch, "--iptables-backend", backend)
        assert done.returncode == 0, done.stderr
        assert f"IPv4: installed 13 rules (iptables-{backend})" in done.stdout
        assert "IPv6 left alone: no global IPv6 address" in done.stderr
    saved = scratch.run(f"{ipt}-save", "-t", "nat", check=True).stdout
    assert saved.count("-A OUTPUT -p tcp -j FORKLANE_OUTPUT") == 1
    assert saved.count("-A PREROUTING -p tcp -j FORKLANE_INBOUND") == 1
    assert "-A OUTPUT -d 198.18.9.0/24 -p tcp -j OTHER" in saved
    assert "-A OTHER -j RETURN" in saved
    # a re-run with other options replaces forklane's rules
    done = capture(scratch, "--iptables-backend", backend, "--exclude-outbound-ports", "5432")
    assert done.returncode == 0, done.stderr
    saved = scratch.run(f"{ipt}-save", "-t", "nat", check=True).stdout
    assert "-A FORKLANE_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN" in saved
    assert saved.count("-A OUTPUT -p tcp -j FORKLANE_OUTPUT") == 1
    # uninstall removes every trace, twice is fine, and the other rules stay
    for expected in ("removed forklane rules", "no forklane rules"):
        done = capture(scratch, "--uninstall", "--iptables-backend", backend)
        assert done.returncode == 0 and expected in done.stdout, done.stdout + done.stderr
    saved = scratch.run(f"{ipt}-save", "-t", "nat", check=True).stdout
    assert "FORKLANE" not in saved
    assert "-A OUTPUT -d 198.18.9.0/24 -p tcp -j OTHER" in saved


def test_auto_detection_uses_legacy_where_legacy_rules_exist(scratch: Netns, lab: Lab) -> None:
    fresh = capture(scratch)
    assert "(iptables-nft)" in fresh.stdout, fresh.stdout + fresh.stderr
    capture(scratch, "--uninstall")
    other = netns.create(f"fl{os.getpid()}-l")
    try:
        other.run("iptables-legacy", "-t", "filter", "-A", "INPUT", "-p", "tcp", "--dport", "1",
                  "-j", "ACCEPT", check=True)  # the node's tools use legacy here
        for _ in range(2):  # and a re-run finds its own rules there
            done = capture(other)
            assert "IPv4: installed 13 rules (iptables-legacy)" in done.stdout, done.stderr
        assert "FORKLANE_OUTPUT" in other.run("iptables-legacy-save", "-t", "nat").stdout
        assert "FORKLANE" not in other.run("iptables-nft-save", "-t", "nat").stdout
    finally:
        other.delete()


def test_capture_errors_are_one_clear_line(scratch: Netns) -> None:
    denied = capture(scratch, privileged=False)
    assert denied.returncode == 1
    assert "permission denied" in denied.stderr and "NET_ADMIN" in denied.stderr
    assert "Traceback" not in denied.stderr
    missing = scratch.run("env", "PATH=/nonexistent", sys.executable, "-m", "forklane.proxy",
                          "capture")
    assert missing.returncode == 1
    assert "no iptables binary found on PATH" in missing.stderr
    bad = capture(scratch, "--inbound-ports", "8080,http")
    assert bad.returncode == 2 and "--inbound-ports: 'http'" in bad.stderr
    dry = capture(scratch, "--dry-run", "--proxy-uid", "1337", privileged=False)  # no NET_ADMIN
    assert dry.returncode == 0
    assert "iptables -t nat -A FORKLANE_OUTPUT -m owner --uid-owner 1337 -j RETURN" in dry.stdout
    assert "FORKLANE" not in scratch.run("iptables-nft-save", "-t", "nat").stdout


# -- the sidecar with capture ------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_the_apps_http_calls_are_routed_by_key(lab: Lab, sidecar_factory: Any,
                                              backend: str) -> None:
    car = sidecar_factory(("--iptables-backend", backend))
    resolve = ["--resolve", f"catalog.shop.svc.cluster.local:80:{SERVICE_V4}"]
    url = "http://catalog.shop.svc.cluster.local/items"
    baseline = app_curl(lab, *resolve, url)
    assert baseline["server"] == "baseline"
    assert "via: 1.1 forklane" in header_lines(baseline)
    forked = app_curl(lab, *resolve, url, "-H", "x-forklane-routing-key: alice")
    assert forked["server"] == "fork"
    assert app_curl(lab, f"http://{SERVICE_V4}/")["server"] == "baseline"  # by ClusterIP
    # HTTP for a host no service has: relayed to where the app sent it, byte for byte
    other = app_curl(lab, f"http://{UP_V4}:9000/x", "-H", "x-app: 1")
    assert other["server"] == "other"
    assert header_lines(other) == [f"host: {UP_V4}:9000", "user-agent: " + _curl_agent(),
                                   "accept: */*", "x-app: 1"]
    # the control: root is the proxy UID, so root's own call is not captured
    direct = lab.pod.run("curl", "-sS", "--max-time", "10", f"http://{SERVICE_V4}/")
    assert json.loads(direct.stdout)["server"] == "direct"
    metrics = car.metrics()
    assert metrics['forklane_relay_connections_total{listener="outbound",reason="unknown-authority"}'] == 1
    assert metrics['forklane_requests_total{kind="baseline",listener="outbound",service="catalog",status_class="2xx"}'] == 2
    assert metrics['forklane_requests_total{kind="fork",listener="outbound",service="catalog",status_class="2xx"}'] == 1


def _curl_agent() -> str:
    version = subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout
    return "curl/" + version.split()[1]


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_everything_else_passes_through_untouched(lab: Lab, sidecar_factory: Any,
                                                 backend: str) -> None:
    car = sidecar_factory(("--iptables-backend", backend))
    # Redis (an opaque port by default), with a value far larger than any buffer
    value = hashlib.sha256(b"seed").hexdigest() * 60_000  # 3.8 MB
    redis = ["redis-cli", "-h", UP_V4]
    assert lab.pod.run(*redis, "-x", "SET", "big", input=value, user=APP_UID).stdout.strip() == "OK"
    got = lab.pod.run(*redis, "GET", "big", user=APP_UID).stdout.rstrip("\n")
    assert got == value  # redis-cli -x keeps our bytes exactly (no trailing newline added)
    # TLS, verified end to end: the sidecar never saw inside it
    tls = app_curl(lab, "--cacert", str(lab.files / "cert.pem"),
                   "--resolve", f"secure.test:8443:{UP_V4}", "https://secure.test:8443/")
    assert tls["server"] == "secure" and tls["peer"] == POD_V4
    # a server-first protocol on a port that is not opaque: after the detection timeout
    banner = json.loads(lab.pod.run(CLIENT_PY, str(lab.files / "nsclient.py"), "banner", UP_V4, "2525",
                                    user=APP_UID, check=True).stdout)
    assert banner["banner"] == "220 banner\r\n" and banner["reply"] == "250 HELO forklane\r\n"
    assert banner["waited"] >= DETECT_TIMEOUT * 0.8
    # bytes both ways with a half-close in the middle
    echo = json.loads(lab.pod.run(CLIENT_PY, str(lab.files / "nsclient.py"), "echo", UP_V4, "7000", str(2 << 20),
                                  user=APP_UID, check=True).stdout)
    assert echo["intact"] and echo["digest_ok"]
    m = car.metrics()
    relayed = 'forklane_relay_connections_total{listener="outbound",reason="%s"}'
    assert m[relayed % "opaque-port"] == 2
    assert m[relayed % "tls"] == 1
    assert m[relayed % "detect-timeout"] == 1
    assert m[relayed % "not-http"] == 1
    floor = len(value) + (2 << 20)  # the Redis value one way and the other, the echo both ways
    assert m['forklane_relay_bytes_total{direction="upstream",listener="outbound"}'] > floor
    assert m['forklane_relay_bytes_total{direction="downstream",listener="outbound"}'] > floor


def test_inbound_traffic_reaches_the_app_through_the_sidecar(lab: Lab,
                                                             sidecar_factory: Any) -> None:
    car = sidecar_factory()
    done = lab.up.run("curl", "-sS", "--max-time", "10", f"http://{POD_V4}:8080/in")
    answer = json.loads(done.stdout)
    assert answer["server"] == "app"
    lines = header_lines(answer)
    assert "via: 1.1 forklane" in lines and f"x-forwarded-for: {UP_V4}" in lines
    # another port of the pod: to the app on that port, untouched, HTTP or not
    for kind in ("http", "bytes"):
        echo = json.loads(lab.up.run(CLIENT_PY, str(lab.files / "nsclient.py"), "echo", POD_V4, "9090", "300000",
                                     kind, check=True).stdout)
        assert echo["intact"] and echo["digest_ok"]
    # the sidecar's own port is not captured: a direct connection, the listener as without
    # capture (Kubernetes' explicit-mode Service would target it like this)
    direct = json.loads(lab.up.run("curl", "-sS", "--max-time", "10",
                                   f"http://{POD_V4}:15006/direct").stdout)
    assert direct["server"] == "app"
    relayed = 'forklane_relay_connections_total{listener="inbound",reason="%s"}'
    assert car.metric(relayed % "other-port") == 1 and car.metric(relayed % "not-http") == 1
    assert car.metric('forklane_requests_total{kind="local",listener="inbound",service="app",status_class="2xx"}') == 2


def test_the_outbound_listener_is_not_reachable_from_other_pods(lab: Lab,
                                                              sidecar_factory: Any) -> None:
    """Under capture the outbound listener binds loopback only: the app's redirected
    connections reach it, a client in another network namespace dialling the pod's address
    and port 15001 is refused (it would otherwise be an open proxy into the mesh). The
    inbound listener stays reachable there."""
    sidecar_factory()
    assert app_curl(lab, f"http://{SERVICE_V4}/")["server"] == "baseline"  # captured, routed
    outside = lab.up.run("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                         "--max-time", "5", "-H", "Host: catalog", f"http://{POD_V4}:15001/")
    assert outside.returncode == 7, outside  # curl: failed to connect (refused)
    inbound = lab.up.run("curl", "-sS", "--max-time", "10", f"http://{POD_V4}:15006/direct")
    assert json.loads(inbound.stdout)["server"] == "app"


def test_the_sidecars_own_connections_are_not_captured_again(lab: Lab,
                                                             sidecar_factory: Any) -> None:
    car = sidecar_factory()
    before = car.metric("forklane_downstream_connections_total")
    for _ in range(3):
        app_curl(lab, f"http://{SERVICE_V4}/")
    lab.pod.run("redis-cli", "-h", UP_V4, "ping", user=APP_UID, check=True)
    # four app connections accepted, none of the sidecar's own four upstream connections
    assert car.metric("forklane_downstream_connections_total") - before == 4
    assert car.metric("forklane_capture_loops_refused_total") == 0


def test_a_wrong_proxy_uid_cannot_make_a_loop(lab: Lab, sidecar_factory: Any) -> None:
    """The rules exclude uid 4242, the sidecar runs as 0: its upstream connections are
    captured again. The loop guard refuses each at once instead of relaying it again."""
    car = sidecar_factory(("--proxy-uid", "4242"))  # appended after --proxy-uid 0: it wins
    done = lab.pod.run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time",
                       "10", f"http://{SERVICE_V4}/", user=APP_UID)
    assert done.stdout in ("502", "503"), done.stdout + done.stderr  # an answer, not a hang
    ping = lab.pod.run("redis-cli", "-h", UP_V4, "ping", user=APP_UID, timeout=20)
    assert "PONG" not in ping.stdout
    refused = car.metric("forklane_capture_loops_refused_total")
    assert refused >= 2  # the HTTP upstream connection (and its retries) and the relay
    accepted = car.metric("forklane_downstream_connections_total")
    assert accepted <= 2 + refused  # each loop ended at its first turn
    assert "fix --proxy-uid" in car.proc.output()


def test_ipv6_is_captured_too(lab: Lab, sidecar_factory: Any) -> None:
    car = sidecar_factory()
    routed = app_curl(lab, "-g", f"http://[{SERVICE_V6}]/")
    assert routed["server"] == "baseline"  # routed by the authority, over IPv6 capture
    other = app_curl(lab, "-g", f"http://[{UP_V6}]:9000/")
    assert other["server"] == "other6"  # the IPv6 original destination
    pong = lab.pod.run("redis-cli", "-h", UP_V6, "ping", user=APP_UID)
    assert pong.stdout.strip() == "PONG"
    assert car.metric('forklane_relay_connections_total{listener="outbound",reason="opaque-port"}') == 1


def test_explicit_mode_without_capture(lab: Lab, sidecar_factory: Any) -> None:
    """No rules: the app's HTTP_PROXY points at the outbound port, its Service at the inbound
    port. Unknown hosts get today's 404: nothing was captured, so nothing is relayed."""
    car = sidecar_factory(run_args=("--bind", "0.0.0.0"), install=False)
    proxy = {"http_proxy": "http://127.0.0.1:15001", "HTTP_PROXY": "http://127.0.0.1:15001"}
    forked = app_curl(lab, "http://catalog.shop.svc.cluster.local/x", "-H",
                      "x-forklane-routing-key: alice", env=proxy)
    assert forked["server"] == "fork"
    unknown = lab.pod.run("curl", "-s", "-D", "-", "-o", "/dev/null", "--max-time", "10",
                          f"http://{UP_V4}:9000/", user=APP_UID, env=proxy)
    assert re.search(r"^HTTP/1.1 404", unknown.stdout)
    assert "x-forklane-error: no-route" in unknown.stdout.lower()
    inbound = json.loads(lab.up.run("curl", "-sS", "--max-time", "10",
                                    f"http://{POD_V4}:15006/svc").stdout)
    assert inbound["server"] == "app" and f"x-forwarded-for: {UP_V4}" in header_lines(inbound)
    assert car.metric("forklane_relay_connections_total") == 0
