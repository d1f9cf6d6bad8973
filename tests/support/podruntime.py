"""A container runtime for the fake cluster's kubelet that runs the demo's images as real
processes on loopback: `forklane-demo/NAME:VERSION` is the demo's sample service NAME at
VERSION (`python -m forklane.demo.service`), with its injected sidecar (`python -m
forklane.proxy run`) beside it, as a pod would have them.

Each pod gets its own loopback IP (the kubelet's `PodAddress`); the sidecar's inbound
listener binds `podIP:containerPort` (the port the Service's targetPort names), so the
addresses the EndpointSlices and the fork routes carry are the ones that answer. The app
itself listens on 127.0.0.1:0 and reaches other services through its sidecar's outbound
listener (`Host: NAME`), exactly as in the demo.

The sidecar subscribes as the service the pod's labels and annotations name (the fork's pods
say `forklane.io/service` and `forklane.io/sandbox`), in the pod's namespace. An image this
runtime does not know is `ImagePullBackOff`; a process that exits before it is ready is
`CrashLoopBackOff`. Every process is stopped by its PID when the Pod goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.kubeapi import Started, Stuck

__all__ = ["DemoRuntime"]

ROOT = Path(__file__).resolve().parents[2]
IMAGE = re.compile(r"^forklane-demo/(?P<name>[a-z0-9-]+):(?P<version>v[0-9]+)$")
_APP_READY = re.compile(r"listening on (\S+)")
_PROXY_READY = re.compile(r"outbound=(\S+) inbound=(\S+)")
NEXT = {"frontend": "catalog", "catalog": "pricing"}


@dataclass
class _Pod:
    procs: list[asyncio.subprocess.Process] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)


async def _wait_line(proc: asyncio.subprocess.Process, log: Path, pattern: re.Pattern[str],
                     within: float) -> re.Match[str] | None:
    """The first line of `log` matching `pattern`; None if the process exits or time is up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        text = await asyncio.to_thread(log.read_text, errors="replace")
        for line in text.splitlines():
            found = pattern.search(line)
            if found:
                return found
        if proc.returncode is not None:
            return None
        await asyncio.sleep(0.02)  # polling a log file for readiness, with a deadline
    return None


class DemoRuntime:
    def __init__(self, log_dir: Path, grpc: str, *, versions: dict[str, float] | None = None,
                 within: float = 30.0) -> None:
        self.log_dir = log_dir
        self.grpc = grpc
        self.discounts = versions or {"v2": 20.0}
        self.within = within
        self.pods: dict[str, _Pod] = {}

    async def _spawn(self, pod: _Pod, tag: str, args: list[str], *,
                     stdin: bool = False, env: dict[str, str] | None = None
                     ) -> tuple[asyncio.subprocess.Process, Path]:
        log = self.log_dir / f"{tag}.log"
        fh = await asyncio.to_thread(open, log, "w")
        with fh:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, *args, cwd=ROOT, stdout=fh, stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        pod.procs.append(proc)
        pod.logs.append(log)
        return proc, log

    async def run(self, pod_doc: dict[str, Any], ip: str) -> Started | Stuck:
        meta, spec = pod_doc["metadata"], pod_doc["spec"]
        apps = [c for c in spec.get("containers") or () if c.get("name") != "forklane-proxy"]
        image = apps[0].get("image", "") if apps else ""
        found = IMAGE.match(image)
        if found is None:
            return Stuck("ImagePullBackOff", f'Back-off pulling image "{image}"')
        name, version = found["name"], found["version"]
        port = next((p["containerPort"] for c in apps for p in c.get("ports") or ()), None)
        if port is None:
            return Stuck("CreateContainerConfigError", "no containerPort to listen on")
        pod = self.pods.setdefault(meta["name"], _Pod())
        args = ["-P", "-m", "forklane.demo.service", "--name", name, "--version", version]
        if name in NEXT:
            args += ["--next", NEXT[name]]
        if version in self.discounts:
            args += ["--discount", str(self.discounts[version])]
        app, app_log = await self._spawn(pod, f"{meta['name']}-app", args, stdin=True)
        ready = await _wait_line(app, app_log, _APP_READY, self.within)
        if ready is None:
            return Stuck("CrashLoopBackOff", f"container {apps[0]['name']} exited")
        labels = meta.get("labels") or {}
        annotations = meta.get("annotations") or {}
        service = annotations.get("forklane.io/service") or labels.get("app") or name
        namespace = meta.get("namespace", "default")
        env = {}
        if labels.get("forklane.io/sandbox"):
            env["FORKLANE_SANDBOX"] = labels["forklane.io/sandbox"]
        sidecar, sidecar_log = await self._spawn(pod, f"{meta['name']}-sidecar", [
            "-P", "-m", "forklane.proxy", "run", "--controlplane", self.grpc,
            "--service", f"{service}.{namespace}", "--namespace", namespace,
            "--node-id", meta["name"], "--local-app", ready.group(1), "--bind", ip,
            "--port", "0", "--inbound-port", str(port), "--admin-port", "0",
            "--drain-seconds", "0.2",
        ], env=env)
        bound = await _wait_line(sidecar, sidecar_log, _PROXY_READY, self.within)
        if bound is None:
            return Stuck("CrashLoopBackOff", "container forklane-proxy exited")
        assert app.stdin is not None
        app.stdin.write(f"upstream {bound.group(1)}\n".encode())
        await app.stdin.drain()
        return Started(ip)

    async def stop(self, pod_doc: dict[str, Any]) -> None:
        pod = self.pods.pop(pod_doc["metadata"]["name"], None)
        if pod is not None:
            await self._stop(pod)

    async def _stop(self, pod: _Pod) -> None:
        for proc in reversed(pod.procs):
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in pod.procs:
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    async def aclose(self) -> None:
        pods, self.pods = list(self.pods.values()), {}
        for pod in pods:
            await self._stop(pod)

    @property
    def running(self) -> set[str]:
        return set(self.pods)
