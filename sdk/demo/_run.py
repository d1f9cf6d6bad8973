"""`forklane demo`: the whole story on loopback, in seconds, leaving nothing behind.

Starts the stack (`forklane.demo._stack`), creates a sandbox forking `pricing` through
`client.sandbox(...)`, sends requests without and with its routing key to the frontend's
sidecar and prints which version answered at each hop, then explains what happened.

Invariants:
- every process is owned by one `Supervisor` whose `stop_all` runs on every exit path:
  success, `DemoFailed`, SDK errors, Ctrl-C (SIGINT), SIGTERM and SIGHUP;
- the children get the caller's environment without `FORKLANE_*` variables, so a user's
  settings (a store URL, ports, a token) cannot leak into the throw-away stack;
- the demo checks its own result: a keyed request that misses the fork, or an unkeyed one
  that reaches it, is a failure with a one-line reason, not a wrong picture.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table
from rich.text import Text

from forklane.client import Client, RetryPolicy, SandboxHandle
from forklane.config import ClientConfig
from forklane.controlplane.wire import ForkSpec
from forklane.demo._stack import CHAIN, FORK_SERVICE, Stack, Step, start_stack
from forklane.demo._supervisor import DemoFailed, Supervisor
from forklane.demo._trip import Hop, Trip, check_trip, parse_trip, trip_line
from forklane.propagation import ROUTING_KEY_HEADER

__all__ = ["run_demo"]

FORK = Hop(FORK_SERVICE, "v2")
SANDBOX_NAME = "demo-pricing-v2"


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORKLANE_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _client(url: str) -> Client:
    # Everything is local: fail fast rather than retry for long.
    return Client(config=ClientConfig(url=url), timeout=5.0, retry=RetryPolicy(attempts=2))


def _short(key: str) -> str:
    return key if len(key) <= 6 else f"{key[:4]}…"


def _send(http: httpx.Client, stack: Stack, n: int, sb: SandboxHandle | None) -> Trip:
    headers = dict(sb.headers) if sb is not None else {}
    try:
        resp = http.get(f"http://{stack.entry}/", headers=headers)
    except httpx.HTTPError as exc:
        raise DemoFailed(f"request {n}: frontend's sidecar did not answer: {exc}") from exc
    if resp.status_code != 200:
        try:
            reason = str(resp.json().get("error", ""))
        except ValueError:
            reason = resp.headers.get("x-forklane-error", "") or resp.text.strip()[:120]
        raise DemoFailed(f"request {n}: answered {resp.status_code}: {reason}")
    try:
        trip = parse_trip(resp.content)
    except ValueError as exc:
        raise DemoFailed(f"request {n}: {exc}") from exc
    problem = check_trip(
        trip, keyed=sb is not None, fork=FORK, chain=tuple(name for name, _ in CHAIN)
    )
    if problem:
        raise DemoFailed(f"request {n} {problem}")
    return trip


def _explain(console: Console, sb: SandboxHandle) -> None:
    points = Table.grid(padding=(0, 1))
    points.add_column(no_wrap=True)
    points.add_column()
    for line in (
        "The baseline is frontend → catalog → pricing, v1 each, every one behind its own "
        "forklane sidecar, all following one control plane.",
        f"The sandbox [bold]{sb.name}[/] forks only pricing: v2 runs beside the baseline, "
        "nothing else was copied.",
        "Requests without the key never see the sandbox. Requests with it "
        f"([cyan]{ROUTING_KEY_HEADER}: {sb.routing_key}[/]) pass through the same frontend "
        "and catalog, and the sidecars send the call to pricing to v2.",
        "The key travels from hop to hop because each service forwards it "
        "(forklane.propagation.aiohttp, one middleware); the sidecars route on it.",
    ):
        points.add_row("  •", Text.from_markup(line))  # Text: no number highlighting
    console.print()
    console.print("[bold]What happened[/]")
    console.print(points)


def _keep_running(console: Console, stack: Stack, sb: SandboxHandle) -> None:
    entry = f"http://{stack.entry}/"
    console.print()
    console.print("[bold]Try it yourself[/] (the stack is still running):")
    console.print(f"  curl {entry}", soft_wrap=True, highlight=False)
    console.print(
        f"  curl -H '{ROUTING_KEY_HEADER}: {sb.routing_key}' {entry}",
        soft_wrap=True,
        highlight=False,
    )
    console.print(f"  forklane --url {stack.api_url} sandbox list", soft_wrap=True, highlight=False)
    console.print("Press Ctrl-C to stop everything.")
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            signal.pause()


def run_demo(console: Console, *, requests: int = 4, keep: bool = False) -> None:
    """Run the demo; raises `DemoFailed` (or an SDK error) with a one-line reason on failure."""
    if requests < 2:
        raise DemoFailed("--requests must be at least 2 (one without the key, one with it)")
    started = time.monotonic()

    def step(title: str, detail: str) -> None:
        console.print(
            Text.assemble(
                ("  ✓ ", "green"),
                (f"{title:<20}", "bold"),
                detail,
                (f"  {time.monotonic() - started:.1f} s", "dim"),
            ),
            soft_wrap=True,
        )

    console.print("[bold]forklane demo[/]: a request with a routing key reaches your fork")
    workdir = Path(tempfile.mkdtemp(prefix="forklane-demo-"))
    sup = Supervisor(workdir, _child_env())
    try:
        # `sup` stops every process on the way out; `story` first closes what uses them
        with sup, contextlib.ExitStack() as story:
            _tell_story(console, sup, story, workdir, step, requests=requests, keep=keep)
    except KeyboardInterrupt:
        console.print(f"[dim]interrupted: stopped all {sup.stopped} processes[/]", highlight=False)
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    console.print(
        f"[dim]stopped all {sup.stopped} processes; done in {time.monotonic() - started:.1f} s[/]",
        highlight=False,
    )


def _tell_story(
    console: Console,
    sup: Supervisor,
    exits: contextlib.ExitStack,
    workdir: Path,
    step: Step,
    *,
    requests: int,
    keep: bool,
) -> None:
    """Everything between starting the first process and stopping the last one."""
    with console.status("starting the control plane, the services and their sidecars…"):
        stack, client = start_stack(sup, workdir / "data", _client, step)
    exits.callback(client.close)
    with console.status("creating the sandbox and waiting until it is Ready…"):
        sb = exits.enter_context(
            client.sandbox(
                forks=[ForkSpec(service=FORK_SERVICE, endpoints=[stack.fork_endpoint])],
                name=SANDBOX_NAME,
                ttl="1h",
                labels={"app.forklane.dev/demo": "true"},
                timeout=15.0,
            )
        )
    step("sandbox ready", f"{sb.name} forks pricing → pricing v2, routing key {sb.routing_key}")
    console.print()
    http = exits.enter_context(httpx.Client(timeout=5.0))
    for n in range(1, requests + 1):
        keyed = n % 2 == 0
        trip = _send(http, stack, n, sb if keyed else None)
        label = f"request {n} ({'key ' + _short(sb.routing_key) if keyed else 'no key'})"
        console.print(trip_line(label, trip, FORK), soft_wrap=True)
    _explain(console, sb)
    if keep:
        _keep_running(console, stack, sb)
    else:
        console.print()
        console.print(
            "Run [bold]forklane demo --keep[/] to leave the stack running and try it with curl."
        )
