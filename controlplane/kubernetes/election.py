"""Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does it:
one replica holds the Lease and renews it; another takes it only once `renewTime +
leaseDurationSeconds` has passed. Writes carry the Lease's resourceVersion, so when two
replicas race for it the API server lets exactly one win (the other gets 409 Conflict).

`claim()` is pure (the Lease as read, who we are, the time → the Lease to write, or None when
someone else validly holds it); `LeaseElector` does the reads and writes.

Invariants:
- a replica believes it leads only until `renewTime + leaseDurationSeconds` of its own last
  successful write, so two replicas never both act as leader while their clocks agree;
- a replica that stops (`aclose`) releases the Lease by clearing its holder, so the next one
  need not wait out the duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from forklane.controlplane.kubernetes.client import LEASES, KubeClient, KubeError, KubeUnavailable

__all__ = ["LeaseElector", "claim"]

log = logging.getLogger("forklane.controlplane.election")
JSON = dict[str, Any]
_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # MicroTime


def _parse(text: str | None) -> datetime | None:
    if not text:
        return None
    for fmt in (_FORMAT, "%Y-%m-%dT%H:%M:%SZ"):
        with contextlib.suppress(ValueError):
            return datetime.strptime(text, fmt).replace(tzinfo=UTC)
    return None


def _format(at: datetime) -> str:
    return at.astimezone(UTC).strftime(_FORMAT)


def claim(lease: Mapping[str, Any] | None, me: str, now: datetime, duration: int,
          *, name: str, namespace: str) -> JSON | None:
    """The Lease to write so that `me` holds it at `now`, or None when another holder's
    term has not run out."""
    spec: Mapping[str, Any] = (lease or {}).get("spec") or {}
    holder = spec.get("holderIdentity") or ""
    renewed = _parse(spec.get("renewTime"))
    term = int(spec.get("leaseDurationSeconds") or duration)
    if holder and holder != me and renewed is not None and now < renewed + timedelta(
            seconds=term):
        return None
    transitions = int(spec.get("leaseTransitions") or 0)
    acquired = spec.get("acquireTime") if holder == me else _format(now)
    new_spec: JSON = {
        "holderIdentity": me, "leaseDurationSeconds": duration,
        "acquireTime": acquired or _format(now), "renewTime": _format(now),
        "leaseTransitions": transitions + (1 if holder and holder != me else 0),
    }
    meta: JSON = {"name": name, "namespace": namespace}
    if lease is not None:
        meta["resourceVersion"] = lease["metadata"]["resourceVersion"]
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
            "spec": new_spec}


class LeaseElector:
    def __init__(self, kube: KubeClient, *, name: str, namespace: str, identity: str,
                 duration: int = 15, renew_every: float = 5.0,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 on_change: Callable[[bool], None] | None = None) -> None:
        self._kube = kube
        self.name, self.namespace, self.identity = name, namespace, identity
        self._duration = duration
        self._renew_every = renew_every
        self._clock = clock
        self._on_change = on_change
        self._valid_until: datetime | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def leading(self) -> bool:
        return self._valid_until is not None and self._clock() < self._valid_until

    async def try_acquire(self) -> bool:
        """One read and at most one write: True when we hold the Lease afterwards."""
        was = self.leading
        now = self._clock()
        try:
            try:
                lease: JSON | None = await self._kube.get(LEASES, self.name, self.namespace)
            except KubeError as exc:
                if exc.status != 404:
                    raise
                lease = None
            body = claim(lease, self.identity, now, self._duration, name=self.name,
                         namespace=self.namespace)
            if body is None:
                self._valid_until = None
            else:
                if lease is None:
                    await self._kube.create(LEASES, body, self.namespace)
                else:
                    await self._kube.replace(LEASES, body, self.namespace)
                self._valid_until = now + timedelta(seconds=self._duration)
        except KubeError as exc:
            if exc.status not in (404, 409):
                log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
            self._valid_until = None  # 409: another replica won this round
        except KubeUnavailable as exc:
            log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
            # keep leading only while our last term lasts (`leading` checks the clock)
        if self.leading != was:
            log.info("lease %s/%s: %s", self.namespace, self.name,
                     "leading" if self.leading else "not leading")
            if self._on_change is not None:
                self._on_change(self.leading)
        return self.leading

    async def start(self) -> None:
        await self.try_acquire()
        self._task = asyncio.create_task(self._run(), name="forklane-lease")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._renew_every if self.leading else self._renew_every / 2)
            await self.try_acquire()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.leading:
            with contextlib.suppress(KubeError, KubeUnavailable):
                lease = await self._kube.get(LEASES, self.name, self.namespace)
                if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                    lease["spec"]["holderIdentity"] = ""
                    await self._kube.replace(LEASES, lease, self.namespace)
        self._valid_until = None
