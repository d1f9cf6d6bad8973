"""Active health probes: one owned task per probe target (a check and an endpoint address),
started and stopped as routing tables come and go; the results go to the `HealthBook` the
balancer reads.

Invariants:
- no task exists when no destination configures a health check;
- a table swap starts probes for new targets, cancels those of targets no table names any
  more and leaves the others running on their own schedule (rules pushed ten times a
  second neither reset a target's state nor cancel a probe in flight);
- at most `concurrency` probes are in flight at once, whatever the number of targets;
- a probe never raises into the loop: every outcome is a pass or a failure with a reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from forklane.proxy.health import HealthBook, Target, targets
from forklane.proxy.table import Endpoint, HealthPolicy, RoutingTable

__all__ = ["Prober", "probe"]

log = logging.getLogger("forklane.proxy")

_STATUS_LINE = 8192  # bytes of a status line we read at most


async def probe(policy: HealthPolicy, endpoint: Endpoint) -> tuple[bool, str]:
    """One probe of `endpoint`: (passed, what was seen)."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(policy.timeout):
            reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port,
                                                           limit=_STATUS_LINE)
            if policy.kind == "tcp":
                return True, "ok"
            writer.write(
                b"GET %s HTTP/1.1\r\nhost: %s\r\nuser-agent: forklane-health\r\n"
                b"connection: close\r\n\r\n"
                % (policy.path.encode("ascii"), endpoint.address.encode("ascii", "replace"))
            )
            line = await reader.readline()
    except TimeoutError:
        return False, "timeout"
    except (OSError, ValueError) as exc:  # refused, reset, an over-long line
        return False, f"connect-failed: {exc.__class__.__name__}"
    finally:
        if writer is not None:
            writer.close()  # a probe's connection is never reused
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        return False, "not an HTTP answer"
    status = int(parts[1])
    return (True, "ok") if policy.passes(status) else (False, f"status {status}")


class Prober:
    """The probe tasks of one proxy process (see the module doc)."""

    def __init__(
        self,
        book: HealthBook,
        loop: asyncio.AbstractEventLoop,
        draw: Callable[[], float],
        concurrency: int = 32,
        check: Callable[[HealthPolicy, Endpoint], Awaitable[tuple[bool, str]]] = probe,
    ) -> None:
        self.book = book
        self.loop = loop
        self.draw = draw
        self.check = check
        self.slots = asyncio.Semaphore(concurrency)
        self.tasks: dict[Target, asyncio.Task[None]] = {}

    def update(self, table: RoutingTable) -> None:
        """Probe exactly what `table` configures (called on every table swap)."""
        wanted = targets(table)
        added, removed = self.book.update(wanted)
        for target in removed:
            task = self.tasks.pop(target, None)
            if task is not None:
                task.cancel()
        for target in added:
            self.tasks[target] = self.loop.create_task(self._run(target, wanted[target]))

    async def _run(self, target: Target, endpoint: Endpoint) -> None:
        policy = target[0]
        # The first probe soon (spread when jittered), then one per interval.
        await asyncio.sleep(policy.jitter * self.draw())  # the probe schedule
        while True:
            async with self.slots:
                try:
                    passed, detail = await self.check(policy, endpoint)
                except Exception as exc:  # a bug must not end this endpoint's probes silently
                    log.exception("health probe of %s failed", endpoint.address)
                    passed, detail = False, f"error: {exc.__class__.__name__}"
            if self.book.record(target, passed, detail, self.loop.time()):
                state = "healthy" if passed else "unhealthy"
                log.warning("endpoint %s is %s (%s: %s)", endpoint.address, state,
                            policy.label, detail)
            await asyncio.sleep(policy.interval + policy.jitter * self.draw())

    async def aclose(self) -> None:
        tasks = list(self.tasks.values())
        self.tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
