"""The push protocol's messages and the control plane's view of connected proxies."""

from __future__ import annotations

import asyncio
import json
import random

import pytest

from forklane.controlplane.push.registry import ProxyRegistry
from forklane.proxy.push_messages import (
    MessageError,
    Node,
    SnapshotRejected,
    SnapshotResponse,
    SubscribeRequest,
    decode_request,
    decode_response,
    encode_full_response,
    encode_request,
    encode_response,
)
from forklane.proxy.schema import RoutingSnapshot, Service
from forklane.proxy.subscriber import backoff_delay

SNAP = RoutingSnapshot(
    version="12", services=(Service(name="catalog", endpoints=("10.0.0.1:80",)),)
)


def test_spliced_full_response_decodes_like_the_model() -> None:
    fast = encode_full_response("12", "n-1", SNAP.model_dump_json().encode())
    plain = encode_response(SnapshotResponse(version_info="12", nonce="n-1", snapshot=SNAP))
    assert json.loads(fast) == json.loads(plain)
    decoded = decode_response(fast)
    assert (decoded.version_info, decoded.nonce, decoded.kind) == ("12", "n-1", "full")
    assert decoded.snapshot == SNAP


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"kind": "delta", "snapshot": None}, "'delta' responses are not supported"),
        ({"kind": "full"}, "needs a snapshot"),
        ({"kind": "full", "snapshot": {"version": "11"}}, "differs from version_info"),
        (
            {"kind": "full", "snapshot": {"version": "12", "services": [{"name": "BAD"}]}},
            "services.0.name",
        ),
    ],
)
def test_pushes_to_nack_keep_their_nonce(body: dict[str, object], reason: str) -> None:
    data = json.dumps({"version_info": "12", "nonce": "n-7", **body}).encode()
    with pytest.raises(SnapshotRejected) as err:
        decode_response(data)
    assert (err.value.version_info, err.value.nonce) == ("12", "n-7")
    assert reason in err.value.reason


@pytest.mark.parametrize("data", [b"", b"[]", b'{"nonce": "1"}', b"\xff"])
def test_garbage_responses_are_message_errors(data: bytes) -> None:
    with pytest.raises(MessageError):
        decode_response(data)


def test_request_round_trip_and_rejects_unknown_fields() -> None:
    req = SubscribeRequest(node=Node(id="pod-1", service="catalog", listeners=("inbound",)))
    assert decode_request(encode_request(req)) == req
    assert decode_request(encode_request(req)).node.capabilities == ("full",)  # type: ignore[union-attr]
    with pytest.raises(MessageError, match="bogus"):
        decode_request(b'{"bogus": 1}')


def test_backoff_starts_small_doubles_and_is_capped_at_5s() -> None:
    rng = random.Random(4)
    first = [backoff_delay(0, rng) for _ in range(200)]
    assert max(first) <= 0.2 and min(first) >= 0.0
    third = [backoff_delay(3, rng) for _ in range(200)]
    assert 0.8 < max(third) <= 1.6
    late = [backoff_delay(n, rng) for n in (10, 50, 1000) for _ in range(200)]
    assert max(late) <= 5.0 and max(late) > 4.0  # capped, and jittered up to the cap


async def test_registry_tracks_streams_and_acks() -> None:
    reg = ProxyRegistry(replica="cp-0")
    changes: list[int] = []
    reg.add_listener(lambda: changes.append(len(reg)))
    assert reg.all_acked(5) is True  # nobody connected, nobody behind

    a = reg.connect("pod-a", "catalog", ("inbound",), None)
    b = reg.connect("pod-b", None, (), "4")
    assert not reg.all_acked(4)
    waiter = asyncio.create_task(reg.wait_all_acked(5))
    reg.sent(a, "5")
    reg.acked(a, "5")
    reg.sent(b, "5")
    reg.nacked(b, "5", "bad rule")
    await asyncio.sleep(0)
    assert not waiter.done()
    info = {i.node_id: i for i in reg.list()}
    assert info["pod-b"].acked_version == "4" and info["pod-b"].last_error == "bad rule"
    assert info["pod-a"].replica == "cp-0" and info["pod-a"].listeners == ["inbound"]
    reg.disconnect(b)
    await asyncio.wait_for(waiter, 1)  # the laggard left: everyone connected runs 5
    assert [i.node_id for i in reg.list()] == ["pod-a"]
    assert changes[-1] == 1
    reg.acked(b, "9")  # answers from a closed stream are ignored
    assert len(reg) == 1
