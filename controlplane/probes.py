"""Probe scheduler: when to probe each sandbox's fork endpoints, and what the last probe found.

A sandbox whose forks are new or changed is due at once; a Pending one again after a backoff
(`fast_interval`, doubling up to `interval`); a Ready one every `interval`. At most
`concurrency` connects run at a time. The probe and the loop time are injected, so a test
decides what answers and when.

Invariants:
- a result is kept only if the sandbox's fork targets did not change while it was probed;
- `seq` of a sandbox grows whenever its result changes (the reconciler compares it, not lists).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from forklane.controlplane import wire
from forklane.controlplane.judging import NO_SUCH_HOST
from forklane.proxy.schema import parse_endpoint

__all__ = ["NO_SUCH_HOST", "Probe", "ProbeScheduler", "Probed", "tcp_probe"]

Probe = Callable[[str, float], Awaitable[str | None]]
Target = tuple[tuple[str, tuple[str, ...]], ...]  # (service, endpoints) per fork


async def tcp_probe(endpoint: str, within: float) -> str | None:
    """None when `endpoint` accepts a TCP connection `within` seconds, else the reason."""
    try:
        host, port = parse_endpoint(endpoint)
        async with asyncio.timeout(within):
            _, writer = await asyncio.open_connection(host, port)
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_NONAME:  # an answer, not a failure to get one
            return f"{endpoint}: {NO_SUCH_HOST}"
        return f"{endpoint}: {exc.strerror or exc}"
    except TimeoutError:
        return f"{endpoint}: no answer within {within:g}s"
    except (OSError, ValueError) as exc:
        return f"{endpoint}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


@dataclass(slots=True)
class Probed:
    """What the last probe of one sandbox's forks found, and when to probe again."""

    target: Target
    forks: tuple[wire.ForkStatus, ...] | None = None  # None: not probed yet
    due: float = 0.0  # loop time
    failures: int = 0
    seq: int = 0


def _probed_forks(sb: wire.Sandbox) -> list[wire.ForkSpec]:
    """Forks at endpoints someone runs (a `forkOf` workload's readiness is the cluster's, a
    `local` fork's is its `forklane connect`'s)."""
    return [f for f in sb.spec.forks if f.fork_of is None and not f.local]


def probe_target(sb: wire.Sandbox) -> Target:
    return tuple((f.service, tuple(f.endpoints)) for f in _probed_forks(sb))


class ProbeScheduler:
    def __init__(
        self,
        probe: Probe = tcp_probe,
        *,
        timeout: float = 1.0,
        interval: float = 5.0,
        fast_interval: float = 0.25,
        concurrency: int = 64,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._probe = probe
        self._timeout = timeout
        self._interval = interval
        self._fast = min(fast_interval, interval)
        self._slots = asyncio.Semaphore(max(1, concurrency))
        self._clock = clock
        self._probed: dict[str, Probed] = {}

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    def result(self, name: str) -> Probed | None:
        return self._probed.get(name)

    def forget_except(self, names: Iterable[str]) -> None:
        """Drop what is kept for sandboxes not in `names` (deleted ones)."""
        keep = set(names)
        for gone in self._probed.keys() - keep:
            del self._probed[gone]

    def due(self, sandboxes: Iterable[wire.Sandbox]) -> tuple[list[wire.Sandbox], float | None]:
        """The sandboxes whose forks are new, changed, or due for another look; and when the
        next one not yet due will be (loop time)."""
        now = self._now()
        due: list[wire.Sandbox] = []
        next_due: float | None = None
        for sb in sandboxes:
            name = sb.metadata.name
            target = probe_target(sb)
            probed = self._probed.get(name)
            if probed is None or probed.target != target:
                probed = self._probed[name] = Probed(target)
            if probed.due <= now:
                due.append(sb)
            elif next_due is None or probed.due < next_due:
                next_due = probed.due
        return due, next_due

    async def run(self, due: Iterable[wire.Sandbox]) -> bool:
        """Probe `due` in parallel (bounded); True when some result changed."""
        batch = list(due)
        results = await asyncio.gather(*(self._probe_forks(sb) for sb in batch))
        now = self._now()
        changed = False
        for sb, forks in zip(batch, results, strict=True):
            probed = self._probed.get(sb.metadata.name)
            if probed is None or probed.target != probe_target(sb):
                continue  # deleted or changed while probing: probed again later
            ok = all(f.ready for f in forks)
            probed.failures = 0 if ok else probed.failures + 1
            backoff = self._fast * 2 ** min(probed.failures - 1, 16)
            probed.due = now + (self._interval if ok else min(self._interval, backoff))
            if forks != probed.forks:
                probed.forks = forks
                probed.seq += 1
                changed = True
        return changed

    async def _probe_one(self, endpoint: str) -> str | None:
        async with self._slots:
            return await self._probe(endpoint, self._timeout)

    async def _probe_forks(self, sb: wire.Sandbox) -> tuple[wire.ForkStatus, ...]:
        forks = _probed_forks(sb)
        endpoints = [(fork.service, ep) for fork in forks for ep in fork.endpoints]
        answers = await asyncio.gather(*(self._probe_one(ep) for _, ep in endpoints))
        errors: dict[str, list[str]] = {fork.service: [] for fork in forks}
        for (service, _), error in zip(endpoints, answers, strict=True):
            if error is not None:
                errors[service].append(error)
        return tuple(
            wire.ForkStatus(
                service=fork.service,
                ready=not errors[fork.service],
                message="; ".join(errors[fork.service]),
            )
            for fork in forks
        )
