"""Lease claims (pure): who may take or renew the Lease at what time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from forklane.controlplane.kubernetes.election import claim

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _lease(holder: str, renewed: datetime, duration: int = 15) -> dict[str, object]:
    return {"metadata": {"name": "l", "namespace": "ns", "resourceVersion": "7"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": duration,
                     "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                     "acquireTime": "2026-03-01T11:00:00.000000Z", "leaseTransitions": 2}}


def test_free_lease_is_created_and_held_one_is_renewed() -> None:
    new = claim(None, "a", T0, 15, name="l", namespace="ns")
    assert new is not None and new["spec"]["holderIdentity"] == "a"
    assert "resourceVersion" not in new["metadata"], "a create carries no version"
    renewed = claim(_lease("a", T0), "a", T0 + timedelta(seconds=5), 15, name="l",
                    namespace="ns")
    assert renewed is not None and renewed["metadata"]["resourceVersion"] == "7"
    assert renewed["spec"]["acquireTime"] == "2026-03-01T11:00:00.000000Z"
    assert renewed["spec"]["leaseTransitions"] == 2


def test_another_holder_blocks_until_its_term_ends() -> None:
    held = _lease("a", T0)
    assert claim(held, "b", T0 + timedelta(seconds=14), 15, name="l", namespace="ns") is None
    taken = claim(held, "b", T0 + timedelta(seconds=15), 15, name="l", namespace="ns")
    assert taken is not None and taken["spec"]["holderIdentity"] == "b"
    assert taken["spec"]["leaseTransitions"] == 3
    released = _lease("", T0)
    assert claim(released, "b", T0, 15, name="l", namespace="ns") is not None
