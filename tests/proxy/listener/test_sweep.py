"""The listener's sweep ends connections whose deadline passed a batch per loop turn, so a
burst of thousands expiring together (slowloris connections opened at once) leaves room for
every other connection's I/O in between; each is checked again when its batch comes."""

from __future__ import annotations

import asyncio

from forklane.proxy.listener.context import EXPIRE_BATCH, Clock, ListenerContext
from forklane.proxy.metrics import Stats
from forklane.proxy.settings import ProxySettings
from forklane.proxy.state import TableHolder
from tests.support.polling import eventually


class Conn:
    """A listener connection with a deadline: it records when it was ended."""

    def __init__(self, ctx: ListenerContext, deadline: float) -> None:
        self.ctx = ctx
        self.deadline = deadline
        self.deadline_kind = 1
        self.ended = False

    def deadline_expired(self) -> None:
        self.deadline_kind = 0
        self.ended = True
        self.ctx.remove(self)

    def expire_requests(self, now: float) -> None:
        return None

    def drain(self) -> None:
        return None

    def close(self) -> None:
        return None


async def test_a_burst_of_expiries_is_ended_in_batches_between_other_work() -> None:
    loop = asyncio.get_running_loop()
    now = [100.0]
    ctx = ListenerContext("outbound", TableHolder(None, ""), ProxySettings(), Stats(), None,
                          None, lambda: 0.5, loop, Clock(lambda: now[0]))  # type: ignore[arg-type]
    due = [Conn(ctx, 99.0) for _ in range(EXPIRE_BATCH * 5)]
    later = Conn(ctx, 200.0)
    for conn in (*due, later):
        ctx.add(conn)
    ctx.sweep()
    assert sum(c.ended for c in due) == EXPIRE_BATCH  # the first batch, at once
    moved_on = next(c for c in due if not c.ended)
    moved_on.deadline = 150.0  # it got its bytes meanwhile: a new deadline
    await asyncio.sleep(0)  # one loop turn (what is measured): one more batch, not all
    # (less one if the connection that moved on was in that batch: it is skipped)
    assert 2 * EXPIRE_BATCH - 1 <= sum(c.ended for c in due) <= 2 * EXPIRE_BATCH
    await eventually(lambda: sum(c.ended for c in due) == len(due) - 1, within=5,
                     what="every due connection ended")
    assert not moved_on.ended and not later.ended
    assert ctx.connections == {moved_on, later}
