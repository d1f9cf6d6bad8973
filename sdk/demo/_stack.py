"""Bring up the demo's stack on loopback: control plane, sample services, their sidecars.

    frontend ─▶ sidecar ─▶ catalog ─▶ sidecar ─▶ pricing v1        (baseline)
                                                └──▶ pricing v2     (the fork, with the key)

Every component is a child process of the demo (`sys.executable -m …`, never imported: the
SDK knows the proxy and the control plane only by their command lines and wire schemas).
Ports are all 0; the real ones are read from each process's ready line.

Invariants:
- nothing waits a fixed time: each step polls for a ready line or a condition, with a deadline;
- a baseline service is registered with its sidecar's inbound port as endpoint and its own
  name as authority, so `Host: catalog` on any outbound listener reaches catalog's sidecar;
- `start_stack` returns only when every sidecar runs a snapshot that holds all three services.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from forklane.client import Client
from forklane.controlplane.wire import Metadata, ServiceResource, ServiceSpec
from forklane.demo._lines import READY_PREFIX, UPSTREAM_PREFIX
from forklane.demo._supervisor import Child, DemoFailed, Supervisor

__all__ = ["CHAIN", "FORK_SERVICE", "Stack", "Step", "start_stack"]

# (service, the service it calls) from the edge inwards
CHAIN: tuple[tuple[str, str | None], ...] = (
    ("frontend", "catalog"),
    ("catalog", "pricing"),
    ("pricing", None),
)
FORK_SERVICE = "pricing"
BASE_PRICE = 100.0
FORK_DISCOUNT = 20.0

_CP_READY = re.compile(r"forklane controlplane listening on http://(\S+) \(grpc (\S+),")
_APP_READY = re.compile(re.escape(READY_PREFIX) + r" \S+ \S+ listening on (\S+)")
_PROXY_READY = re.compile(r"forklane proxy listening: outbound=(\S+) inbound=(\S+) admin=(\S+)")

Step = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class Stack:
    """Addresses of what runs: where to send requests and where the control plane is."""

    api_url: str
    grpc_address: str
    inbound: dict[str, str]  # service -> its sidecar's inbound listener
    outbound: dict[str, str]  # service -> its sidecar's outbound listener
    fork_endpoint: str  # pricing v2, the sandbox's fork

    @property
    def entry(self) -> str:
        """Where a user's request enters: the frontend's sidecar."""
        return self.inbound[CHAIN[0][0]]


def _app_args(name: str, version: str, next_service: str | None) -> list[str]:
    args = ["-P", "-m", "forklane.demo.service", "--name", name, "--version", version]
    if next_service:
        args += ["--next", next_service]
    else:
        args += ["--price", f"{BASE_PRICE:g}"]
        if version != "v1":
            args += ["--discount", f"{FORK_DISCOUNT:g}"]
    return args


def _wait_acked(client: Client, nodes: set[str], within: float) -> str:
    """Wait until every sidecar in `nodes` ACKed the current snapshot (holding all services)."""
    deadline = time.monotonic() + within
    wanted = {name for name, _ in CHAIN}
    while True:
        snapshot = client.snapshot()
        version = str(snapshot.get("version", ""))
        have = {s.get("name") for s in snapshot.get("services", ())}
        acked = {p.node_id for p in client.proxies() if p.acked_version == version}
        if wanted <= have and nodes <= acked:
            return version
        if time.monotonic() > deadline:
            missing = ", ".join(sorted(nodes - acked)) or "the control plane"
            raise DemoFailed(f"{missing} did not get the routing snapshot within {within:g}s")
        time.sleep(0.05)  # polling the control plane's view, bounded by the deadline


def start_stack(
    sup: Supervisor,
    data_dir: Path,
    client_for: Callable[[str], Client],
    step: Step,
    within: float = 20.0,
) -> tuple[Stack, Client]:
    """Start everything, register the baseline, wait until every sidecar routes it.

    `step(title, detail)` is called as each stage completes (for the progress lines).
    Returns the stack and a client bound to its control plane (the caller closes it).
    """
    cp = sup.spawn(
        "controlplane",
        [
            "-P",
            "-m",
            "forklane.controlplane",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--grpc",
            "127.0.0.1:0",
            "--store",
            "sqlite",
            "--data-dir",
            str(data_dir),
            "--no-auth",
        ],
    )
    apps: dict[str, Child] = {
        name: sup.spawn(f"{name}-v1", _app_args(name, "v1", nxt), stdin=True) for name, nxt in CHAIN
    }
    fork = sup.spawn(f"{FORK_SERVICE}-v2", _app_args(FORK_SERVICE, "v2", None), stdin=True)

    found = sup.wait_lines(
        {cp: _CP_READY, fork: _APP_READY} | dict.fromkeys(apps.values(), _APP_READY), within
    )
    api, grpc = found[cp].group(1), found[cp].group(2)
    app_addr = {name: found[child].group(1) for name, child in apps.items()}
    step("control plane", f"http://{api}  (SQLite in a temporary directory)")

    sidecars = {
        name: sup.spawn(
            f"{name}-sidecar",
            [
                "-P",
                "-m",
                "forklane.proxy",
                "run",
                "--controlplane",
                grpc,
                "--service",
                name,
                "--node-id",
                f"demo-{name}",
                "--local-app",
                app_addr[name],
                "--port",
                "0",
                "--inbound-port",
                "0",
                "--admin-port",
                "0",
                "--drain-seconds",
                "1",
            ],
        )
        for name, _ in CHAIN
    }
    ready = sup.wait_lines(dict.fromkeys(sidecars.values(), _PROXY_READY), within)
    outbound = {name: ready[child].group(1) for name, child in sidecars.items()}
    inbound = {name: ready[child].group(2) for name, child in sidecars.items()}
    for name, nxt in CHAIN:
        if nxt:
            apps[name].send(f"{UPSTREAM_PREFIX}{outbound[name]}")
    step(
        "services",
        " → ".join(name for name, _ in CHAIN)
        + " (v1), each behind its own sidecar; pricing v2 beside them",
    )

    client = client_for(f"http://{api}")
    try:
        for name, _ in CHAIN:
            client.services.apply(
                ServiceResource(
                    metadata=Metadata(name=name, labels={"app.forklane.dev/demo": "true"}),
                    spec=ServiceSpec(authorities=[name], endpoints=[inbound[name]]),
                )
            )
        version = _wait_acked(client, {f"demo-{name}" for name, _ in CHAIN}, within)
    except BaseException:
        client.close()
        raise
    step("baseline registered", f"3 services; every sidecar runs snapshot {version}")
    stack = Stack(
        api_url=f"http://{api}",
        grpc_address=grpc,
        inbound=inbound,
        outbound=outbound,
        fork_endpoint=found[fork].group(1),
    )
    return stack, client
