"""The probe scheduler on an injected clock and probe: what is due when, and backoff."""

from __future__ import annotations

from forklane.controlplane import wire
from forklane.controlplane.probes import ProbeScheduler


class Now:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _sandbox(name: str, endpoint: str) -> wire.Sandbox:
    return wire.Sandbox.model_validate(
        {"metadata": {"name": name},
         "spec": {"forks": [{"service": "pricing", "endpoints": [endpoint]}]}})


async def test_new_due_at_once_then_backoff_doubles_and_ready_waits_interval() -> None:
    answers: dict[str, str | None] = {"127.0.0.1:1": "refused", "127.0.0.1:2": None}
    asked: list[str] = []

    async def probe(endpoint: str, within: float) -> str | None:
        asked.append(endpoint)
        return answers[endpoint]

    now = Now()
    sched = ProbeScheduler(probe, interval=5.0, fast_interval=0.25, clock=now)
    down, up = _sandbox("down", "127.0.0.1:1"), _sandbox("up", "127.0.0.1:2")
    due, _ = sched.due([down, up])
    assert [s.metadata.name for s in due] == ["down", "up"]
    assert await sched.run(due)
    down_result, up_result = sched.result("down"), sched.result("up")
    assert down_result is not None and up_result is not None
    assert down_result.forks == (wire.ForkStatus(service="pricing", ready=False,
                                                 message="refused"),)
    assert up_result.forks is not None and up_result.forks[0].ready
    due, next_due = sched.due([down, up])
    assert due == [] and next_due == 100.25
    now.t = 100.25
    due, _ = sched.due([down, up])
    assert [s.metadata.name for s in due] == ["down"]
    assert not await sched.run(due)  # same answer: nothing changed
    assert sched.due([down, up])[1] == 100.75  # doubled
    seq = down_result.seq
    answers["127.0.0.1:1"] = None
    now.t = 101.0
    assert await sched.run(sched.due([down, up])[0])
    assert down_result.seq == seq + 1 and sched.due([down, up])[1] == 105.0


async def test_changed_target_is_due_at_once_and_forget_drops_deleted() -> None:
    async def probe(endpoint: str, within: float) -> str | None:
        return None

    sched = ProbeScheduler(probe, clock=Now())
    await sched.run(sched.due([_sandbox("a", "127.0.0.1:1")])[0])
    assert sched.due([_sandbox("a", "127.0.0.1:1")])[0] == []
    moved = _sandbox("a", "127.0.0.1:9")
    assert sched.due([moved])[0] == [moved]
    sched.forget_except([])
    assert sched.result("a") is None
