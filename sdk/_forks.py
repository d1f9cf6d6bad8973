"""Fork-of-a-Deployment helpers of the CLI and SDK (pure): the fork spec from flags, and the
progress lines of a wait (one per condition change, with the pod's reason when stuck).

`workload_fork("pricing.shop", images={"app": "pricing:pr-481"}, env=["LOG_LEVEL=debug"])`
forks the Deployment `pricing` in namespace `shop` (the service's NAME.NAMESPACE). An env
entry is `K=V` (for the one container an image names) or `CONTAINER:K=V`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from forklane.controlplane.wire import Sandbox

__all__ = ["condition_lines", "parse_images", "workload_fork", "workload_lines"]


def parse_images(values: Iterable[str]) -> dict[str, str]:
    """`CONTAINER=IMAGE` flags → {container: image}; a bad one raises ValueError naming it."""
    out: dict[str, str] = {}
    for value in values:
        container, sep, image = value.partition("=")
        if not sep or not container or not image:
            raise ValueError(f"--image {value!r}: expected CONTAINER=IMAGE")
        if container in out:
            raise ValueError(f"--image: container {container!r} given twice")
        out[container] = image
    return out


def workload_fork(
    service: str,
    *,
    images: Mapping[str, str] | None = None,
    env: Sequence[str] = (),
    replicas: int | None = None,
    deployment: str | None = None,
) -> dict[str, Any]:
    """The fork spec (a dict the wire model validates) forking `service`'s Deployment."""
    name, dot, namespace = service.partition(".")
    if not dot or not name or not namespace or "." in namespace:
        raise ValueError(f"--fork {service!r}: a Deployment fork names NAME.NAMESPACE "
                         "(or give SERVICE=HOST:PORT for a fork you run yourself)")
    containers: dict[str, dict[str, Any]] = {
        c: {"name": c, "image": image} for c, image in (images or {}).items()}
    for entry in env:
        head, sep, value = entry.partition("=")
        container, colon, key = head.rpartition(":")
        if not sep or not key:
            raise ValueError(f"--env {entry!r}: expected K=V or CONTAINER:K=V")
        if not colon:
            if len(containers) != 1:
                raise ValueError(f"--env {entry!r}: say which container (CONTAINER:K=V); "
                                 f"--image names {len(containers)} containers")
            container = next(iter(containers))
        containers.setdefault(container, {"name": container}).setdefault("env", []).append(
            {"name": key, "value": value})
    customizations: dict[str, Any] = {}
    if replicas is not None:
        customizations["replicas"] = replicas
    if containers:
        customizations["containers"] = list(containers.values())
    fork: dict[str, Any] = {
        "service": service,
        "forkOf": {"kind": "Deployment", "namespace": namespace, "name": deployment or name},
    }
    if customizations:
        fork["customizations"] = customizations
    return fork


def condition_lines(before: Mapping[str, tuple[str, str]], sandbox: Sandbox
                    ) -> tuple[list[str], dict[str, tuple[str, str]]]:
    """Lines for the conditions that changed since `before` (type → (status, reason)), and
    the new state to pass next time. A stuck fork's line carries the pod's reason."""
    now: dict[str, tuple[str, str]] = {}
    lines: list[str] = []
    for cond in sandbox.status.conditions if sandbox.status else ():
        now[cond.type] = (cond.status, cond.reason)
        if before.get(cond.type) != now[cond.type]:
            detail = f": {cond.message}" if cond.message and cond.status != "True" else ""
            lines.append(f"{cond.type} {cond.status} ({cond.reason}){detail}")
    return lines, now


def workload_lines(sandbox: Sandbox) -> list[list[str]]:
    """Rows (WORKLOAD, READY, POD, POD READY, IP, REASON) for `sandbox get`."""
    rows: list[list[str]] = []
    for w in sandbox.status.workloads if sandbox.status else ():
        head = [f"{w.namespace}/{w.name}", f"{w.ready_replicas}/{w.replicas}"]
        if not w.pods:
            rows.append([*head, "-", "-", "-", w.reason or "-"])
        for i, pod in enumerate(w.pods):
            rows.append([*(head if i == 0 else ["", ""]), pod.name,
                         "yes" if pod.ready else "no", pod.ip or "-",
                         pod.reason or ("-" if pod.ready else w.reason or "-")])
    return rows
