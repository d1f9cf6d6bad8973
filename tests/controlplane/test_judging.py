"""Judging without a store: the status each kind gets from the facts observed about it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from forklane.controlplane import wire
from forklane.controlplane.judging import JUDGES, Facts, expires_at, judge, routed_in

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _sandbox(status: dict[str, object] | None = None, generation: int = 1) -> wire.Sandbox:
    doc: dict[str, object] = {
        "metadata": {"name": "sb", "generation": generation, "creationTimestamp": T0},
        "spec": {"forks": [{"service": "pricing", "endpoints": ["127.0.0.1:1"]}],
                 "ttl": {"seconds": 60}},
    }
    if status is not None:
        doc["status"] = status
    return wire.Sandbox.model_validate(doc)


def _conds(doc: dict[str, object]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in doc["conditions"]}  # type: ignore[attr-defined,index]


def test_every_kind_has_a_judge() -> None:
    assert set(JUDGES) == {"sandboxes", "routegroups", "splits", "services"}


def test_sandbox_ready_only_when_compiled_reachable_and_routed() -> None:
    up = (wire.ForkStatus(service="pricing", ready=True),)
    down = (wire.ForkStatus(service="pricing", ready=False, message="refused"),)
    cases = [
        (Facts(1, forks=None, routed_now=True), "Pending", "False"),
        (Facts(1, forks=down, routed_now=True), "Pending", "False"),
        (Facts(1, forks=up, routed_now=False), "Pending", "False"),
        (Facts(1, forks=up, routed_now=True), "Ready", "True"),
        (Facts(1, problem="unknown service 'pricing'", forks=up, routed_now=True), "Failed",
         "False"),
    ]
    for facts, phase, ready in cases:
        doc = judge("sandboxes", _sandbox(), facts, T0)
        assert (doc["phase"], _conds(doc)["Ready"][0]) == (phase, ready), facts
    doc = judge("sandboxes", _sandbox(), Facts(1, forks=down), T0)
    reachable = next(c for c in doc["conditions"] if c["type"] == "Reachable")
    assert reachable["message"] == "refused"
    assert doc["expiresAt"] == (T0 + timedelta(seconds=60)).isoformat().replace("+00:00", "Z")


def test_routed_stays_true_for_its_generation_and_transition_time_is_kept() -> None:
    first = judge("sandboxes", _sandbox(), Facts(1, forks=(), routed_now=True), T0)
    assert routed_in(first, 1) and not routed_in(first, 2)
    later = T0 + timedelta(minutes=5)
    again = judge("sandboxes", _sandbox(first), Facts(1, forks=(), routed_now=False), later)
    assert _conds(again)["Routed"] == ("True", "Acked")
    routed = next(c for c in again["conditions"] if c["type"] == "Routed")
    assert routed["lastTransitionTime"] == first["conditions"][2]["lastTransitionTime"]
    bumped = judge("sandboxes", _sandbox(first, generation=2), Facts(2, forks=()), later)
    assert _conds(bumped)["Routed"] == ("False", "WaitingForAck")


def test_route_group_split_and_service() -> None:
    group = wire.RouteGroup.model_validate(
        {"metadata": {"name": "g"}, "spec": {"selector": {"team": "a"}}})
    assert judge("routegroups", group, Facts(1), T0)["phase"] == "Pending"
    joined = judge("routegroups", group, Facts(1, routing_key="k", members=("sb",)), T0)
    assert (joined["phase"], joined["sandboxes"], joined["routingKey"]) == ("Ready", ["sb"], "k")
    svc = wire.ServiceResource.model_validate(
        {"metadata": {"name": "pricing"}, "spec": {"endpoints": ["127.0.0.1:1"]}})
    failed = judge("services", svc, Facts(3, problem="authority taken"), T0)
    assert (failed["phase"], failed["observedGeneration"]) == ("Failed", 3)
    assert _conds(failed)["Compiled"] == ("False", "CompileFailed")


def test_expiry_counts_from_update_when_asked() -> None:
    sb = wire.Sandbox.model_validate({
        "metadata": {"name": "sb", "creationTimestamp": T0,
                     "updateTimestamp": T0 + timedelta(hours=1)},
        "spec": {"forks": [{"service": "p", "endpoints": ["127.0.0.1:1"]}],
                 "ttl": {"seconds": 10, "since": "update"}},
    })
    assert expires_at(sb) == T0 + timedelta(hours=1, seconds=10)
