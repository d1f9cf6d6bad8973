"""The resilience suite's load, each kind in a process of its own, so that no one of them
starves the others of a core: the ledger client (`load`), the slowloris holder (`loris`) and
the rule pusher (`push`).

    python -m tests.resilience.loadgen ROLE 'JSON ARGUMENTS'

A role prints `ready` once it is set up, waits for a line on stdin (so the test starts all
of them at once), runs its bounded work and prints one JSON line with its result: the
ledger, the slow connections' outcomes, the number of rules pushed. `Role` is the test's
side: start, `go`, `result`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from tests.resilience.ledger import Load
from tests.support.processes import write_config

ROOT = Path(__file__).resolve().parents[2]


def rules(n: int, a: str, b: str) -> dict[str, Any]:
    """The pushed rules' n-th version: limits that change every time, a split every other
    time, one of three other services."""
    doc: dict[str, Any] = {"version": f"rules-{n}", "services": [
        {"name": "svc", "endpoints": [a], "circuit_breakers": {"max_requests": 500 + n}},
        {"name": f"other-{n % 3}", "endpoints": [b]}]}
    if n % 2:
        doc["splits"] = [{"name": "canary", "service": "svc", "destinations": [
            {"name": "a", "weight": 50, "endpoints": [a]},
            {"name": "b", "weight": 50, "endpoints": [b]}]}]
    return doc


async def _load(args: dict[str, Any]) -> dict[str, Any]:
    ledger = await Load(args["url"], args["host"], args["rate"], args["seconds"],
                        clients=args.get("clients", 8)).run()
    return ledger.to_json()


async def _slowloris(port: int, deadline: float) -> tuple[bool, float]:
    """A client that sends its head a few bytes at a time and never finishes it: (answered
    408, seconds until the proxy closed it)."""
    started = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False, time.monotonic() - started
    writer.write(b"GET / HTTP/1.1\r\nhost: svc\r\n")

    async def drip() -> None:
        for i in itertools.count():
            if writer.is_closing():
                return
            writer.write(b"x-slow-%d: 1\r\n" % i)
            await asyncio.sleep(0.5)  # the attacker's pace

    dripping = asyncio.ensure_future(drip())
    try:
        answer = await asyncio.wait_for(reader.read(), deadline)
    except (ConnectionError, TimeoutError):
        answer = b""
    finally:
        dripping.cancel()
        writer.close()
    return answer.startswith(b"HTTP/1.1 408 "), time.monotonic() - started


async def _loris(args: dict[str, Any]) -> dict[str, Any]:
    results = await asyncio.gather(*(_slowloris(args["port"], args["deadline"])
                                     for _ in range(args["count"])))
    return {"results": results}


async def _push(args: dict[str, Any]) -> dict[str, Any]:
    path, pid, seconds = Path(args["path"]), args["pid"], args["seconds"]
    pushed = 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        pushed += 1
        write_config(path, rules(pushed, args["a"], args["b"]))  # atomic: never half a file
        os.kill(pid, signal.SIGHUP)
        await asyncio.sleep(0.1)  # ten pushes a second: the scenario's pace
    return {"pushed": pushed}


ROLES = {"load": _load, "loris": _loris, "push": _push}


async def _main(role: str, args: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    result = await ROLES[role](args)
    print(json.dumps(result), flush=True)


class Role:
    """One load process, seen from the test."""

    def __init__(self, role: str, **args: Any) -> None:
        self.role, self.args = role, args
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> Role:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.resilience.loadgen", self.role, json.dumps(self.args),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        assert line.strip() == b"ready", (self.role, line)
        return self

    def go(self) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")

    async def result(self, within: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            out = await asyncio.wait_for(self.proc.stdout.read(), within)
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(f"the {self.role} process did not finish in {within} s"
                                 ) from None
        assert self.proc.returncode == 0, (self.role, self.proc.returncode)
        doc: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return doc


async def start_together(*roles: Role) -> None:
    """Set every process up, then start all of them at once."""
    await asyncio.gather(*(r.start() for r in roles))
    for r in roles:
        r.go()


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(_main(sys.argv[1], json.loads(sys.argv[2])))
    else:
        uvloop.run(_main(sys.argv[1], json.loads(sys.argv[2])))
