"""Live-tap filters and the proxy's bounded tap buffer (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from forklane.proxy.push_messages import (
    SubscribeRequest,
    TapBatch,
    TapFilterSpec,
    decode_request,
    decode_response,
    encode_request,
    encode_tap_filters,
)
from forklane.proxy.tap import MAX_TARGET, TapBuffer, TapFilter, filters_of, parse_status_class


def record(key: str | None, service: str | None = "web", status: int = 200,
           target: str = "/") -> dict[str, Any]:
    return {"routing_key": key, "service": service, "status": status, "target": target}


@pytest.mark.parametrize(("text", "expected"), [
    ("5xx", 5), ("4XX", 4), ("2", 2), ("503", 5), ("", None), (None, None),
])
def test_status_classes_parse(text: str | None, expected: int | None) -> None:
    assert parse_status_class(text) == expected


@pytest.mark.parametrize("text", ["6xx", "x", "50", "-5", "5xxx"])
def test_bad_status_classes_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="expected a class"):
        parse_status_class(text)


@pytest.mark.parametrize(("f", "args", "wanted"), [
    (TapFilter("a", frozenset({"k1"})), ("k1", "web", 200), True),
    (TapFilter("a", frozenset({"k1"})), ("k2", "web", 200), False),
    (TapFilter("a", frozenset({"k1"})), (None, "web", 200), False),  # keyless: never a sandbox's
    (TapFilter("a"), (None, "web", 200), True),
    (TapFilter("a", service="web"), ("k1", "api", 200), False),
    (TapFilter("a", status_class=5), ("k1", "web", 503), True),
    (TapFilter("a", status_class=5), ("k1", "web", 404), False),
    (TapFilter("a", status_class=0), ("k1", "web", 0), True),  # reset, no answer
])
def test_filters(f: TapFilter, args: tuple[str | None, str | None, int], wanted: bool) -> None:
    assert f.wants(*args) is wanted


def test_buffer_names_the_filters_a_record_matched() -> None:
    buf = TapBuffer([TapFilter("a", frozenset({"k1"})), TapFilter("b", status_class=5)])
    buf.offer(record("k1", status=503))
    buf.offer(record("k1"))
    buf.offer(record(None, status=502))
    buf.offer(record(None))  # nobody watches this
    records, dropped = buf.take(10)
    assert [r["taps"] for r in records] == [["a", "b"], ["a"], ["b"]]
    assert dropped == {}
    assert len(buf) == 0


def test_a_full_buffer_drops_and_counts_per_filter() -> None:
    buf = TapBuffer([TapFilter("a"), TapFilter("b", frozenset({"k"}))], capacity=3)
    for _ in range(5):
        buf.offer(record("k"))
    buf.offer(record(None))
    records, dropped = buf.take(2)
    assert len(records) == 2
    assert dropped == {"a": 3, "b": 2}
    again, dropped_again = buf.take(10)
    assert len(again) == 1 and dropped_again == {}  # drops are reported once


def test_replacing_filters_discards_records_of_gone_filters() -> None:
    buf = TapBuffer([TapFilter("a"), TapFilter("b", frozenset({"k"}))])
    buf.offer(record("k"))
    buf.offer(record(None))
    buf.replace([TapFilter("b", frozenset({"k"}))])
    records, _ = buf.take(10)
    assert [r["taps"] for r in records] == [["b"]]
    buf.replace([])
    assert not buf.wants("k", "web", 200)


def test_long_targets_are_cut() -> None:
    buf = TapBuffer([TapFilter("a")])
    buf.offer(record("k", target="/" + "x" * 10_000))
    (rec,), _ = buf.take(1)
    assert len(rec["target"]) == MAX_TARGET and rec["target_truncated"] is True


def test_tap_messages_round_trip() -> None:
    specs = (TapFilterSpec(id="t1", keys=("k1",), service="web", status_class=5),)
    response = decode_response(encode_tap_filters("7", specs))
    assert response.kind == "tap" and response.taps == specs
    assert filters_of(s.model_dump() for s in specs) == (
        TapFilter("t1", frozenset({"k1"}), "web", 5),
    )
    batch = TapBatch(records=({"status": 200, "taps": ["t1"]},), dropped={"t1": 2})
    request = decode_request(encode_request(SubscribeRequest(tap=batch)))
    assert request.tap == batch and not request.response_nonce
