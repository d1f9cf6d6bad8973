"""Live-tap filters and the proxy's bounded tap buffer (pure)."""

from __future__ import annotations

import base64
import json
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
from forklane.proxy.tap_capture import MAX_BODY, REDACTED, Capture, open_capture, render


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


# -- capture -----------------------------------------------------------------------------------

H1_HEAD = (b"POST /p?q=1 HTTP/1.1\r\nhost: web\r\nAuthorization: Bearer s3cret\r\n"
           b"x-api-key: k-123\r\ncookie: sid=abc\r\nx-trace: t1\r\n\r\n")


def capture_of(limit: int, body: bytes = b"") -> Capture:
    cap = Capture(H1_HEAD, limit)
    for i in range(0, len(body), 3):
        cap.request_data(body[i : i + 3])
    cap.response_head = [(b":status", b"200"), (b"set-cookie", b"sid=new"),
                         (b"content-type", b"text/plain")]
    cap.response_data(b"\xff\xfe binary")
    return cap


def test_a_capture_keeps_only_the_first_bytes_of_each_body() -> None:
    cap = capture_of(5, b"hello world")
    rendered, _ = render(cap, headers=False, body=5)
    assert rendered["request"] == {"body": "hello", "body_bytes": 11, "body_truncated": True}
    assert rendered["response"]["body_encoding"] == "base64"
    assert base64.b64decode(rendered["response"]["body"]) == b"\xff\xfe bi"
    assert "headers" not in rendered["request"]
    assert sum(map(len, cap.request_body)) == 5  # never more kept than asked


def test_redaction_hides_credentials_and_configured_fields() -> None:
    rendered, _ = render(capture_of(0), headers=True, body=0, redact=("X-API-Key",))
    assert rendered["request"]["headers"] == [
        ["host", "web"], ["Authorization", REDACTED], ["x-api-key", REDACTED],
        ["cookie", REDACTED], ["x-trace", "t1"]]
    assert rendered["response"]["headers"] == [
        [":status", "200"], ["set-cookie", REDACTED], ["content-type", "text/plain"]]
    text = json.dumps(rendered)
    assert "s3cret" not in text and "k-123" not in text and "sid=" not in text
    assert "body" not in rendered["request"]


def test_each_filter_gets_the_capture_it_asked_for() -> None:
    buf = TapBuffer([TapFilter("plain"), TapFilter("h", headers=True),
                     TapFilter("b", body=4, redact=frozenset({"x-trace"}))])
    assert buf.capture_limit("k", "web") == 4
    buf.offer(record("k"), capture_of(4, b"abcdefgh"))
    records, _ = buf.take(10)
    by_tap = {tuple(r["taps"]): r for r in records}
    assert set(by_tap) == {("plain",), ("h",), ("b",)}
    assert "capture" not in by_tap[("plain",)]
    assert "body" not in by_tap[("h",)]["capture"]["request"]
    assert by_tap[("b",)]["capture"]["request"]["body"] == "abcd"
    assert "headers" not in by_tap[("b",)]["capture"]["request"]


def test_no_capturing_filter_no_capture() -> None:
    buf = TapBuffer([TapFilter("plain"), TapFilter("other", frozenset({"k2"}), headers=True)])
    assert buf.capture_limit("k", "web") == -1  # the capturing filter watches another key
    assert open_capture([buf], "k", "web", H1_HEAD) is None
    assert open_capture([buf], "k2", "web", H1_HEAD) is not None


def test_captures_are_bounded_in_the_buffer_and_in_a_batch() -> None:
    buf = TapBuffer([TapFilter("b", body=MAX_BODY)], max_bytes=100_000)
    big = b"x" * MAX_BODY
    for _ in range(10):
        buf.offer(record("k"), capture_of(MAX_BODY, big))
    kept = len(buf)
    assert 0 < kept < 10
    records, dropped = buf.take(200, max_bytes=40_000)
    assert 0 < len(records) < kept and dropped == {"b": 10 - kept}
    rest, _ = buf.take(200)
    assert len(records) + len(rest) == kept and len(buf) == 0


def test_capture_wishes_travel_with_the_filter_and_defaults_stay_off_the_wire() -> None:
    specs = (TapFilterSpec(id="t1"),
             TapFilterSpec(id="t2", headers=True, body=512, redact=("x-api-key",)))
    raw = encode_tap_filters("8", specs)
    assert json.loads(raw)["taps"][0] == {"id": "t1"}  # an older proxy reads it as before
    response = decode_response(raw)
    assert response.taps == specs
    assert filters_of(s.model_dump() for s in specs)[1] == TapFilter(
        "t2", headers=True, body=512, redact=frozenset({"x-api-key"}))
