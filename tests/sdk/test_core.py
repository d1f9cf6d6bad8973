"""The SDK's sans-io core driven by scripted replies: retries, errors, waiting, paging.

No sockets: each test runs an operation generator against a script of answers and checks
what it sent, how long it would have slept and what it returned or raised.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest

from forklane._core import (
    SANDBOXES,
    SPLITS,
    Api,
    Op,
    Reply,
    Request,
    Response,
    RetryPolicy,
    Sleep,
    TransportFailure,
    build_sandbox,
    handle_for,
    hard_failure,
    parse_duration,
    routing_headers,
    waiting_reason,
)
from forklane.controlplane.wire import Sandbox, SandboxSpec, Split
from forklane.errors import (
    Conflict,
    Forbidden,
    ForklaneError,
    Invalid,
    NotFound,
    SandboxFailed,
    Unauthorized,
    Unavailable,
    WaitTimeout,
    error_from_response,
)

T = TypeVar("T")
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class FakeClock:
    """Advances only when the operation sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_api(clock: FakeClock | None = None, attempts: int = 4) -> Api:
    return Api(
        "http://cp.test",
        RetryPolicy(attempts=attempts, base_delay=0.1, max_delay=2.0),
        random.Random(7),
        clock or FakeClock(),
        wall_clock=lambda: NOW,
    )


def drive(
    op: Op[T],
    script: Sequence[Reply | Callable[[Request], Reply]],
    clock: FakeClock | None = None,
) -> tuple[T, list[Request], list[float]]:
    """Run `op`; answer the n-th request with script[n]; record requests and sleeps."""
    requests: list[Request] = []
    sleeps: list[float] = []
    answers = iter(script)
    reply: Reply = None
    try:
        while True:
            command = op.send(reply)
            if isinstance(command, Sleep):
                sleeps.append(command.seconds)
                if clock is not None:
                    clock.now += command.seconds
                reply = None
            else:
                requests.append(command)
                answer = next(answers)
                reply = answer(command) if callable(answer) else answer
    except StopIteration as done:
        return done.value, requests, sleeps


def ok(doc: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(doc).encode())


def err(status: int, reason: str, message: str, details: Any = ()) -> Response:
    body = {
        "error": {"status": status, "reason": reason, "message": message, "details": list(details)}
    }
    return Response(status, json.dumps(body).encode())


def sandbox_doc(
    phase: str | None = "Pending",
    generation: int = 1,
    observed: int | None = 1,
    key: str | None = "k1",
    conditions: Sequence[dict[str, str]] = (),
    created: datetime | None = None,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "forklane.dev/v1",
        "kind": "Sandbox",
        "metadata": {"name": "sb", "generation": generation, "resourceVersion": "5"},
        "spec": {"forks": [{"service": "pricing", "endpoints": ["127.0.0.1:9000"]}]},
    }
    if created is not None:
        doc["metadata"]["creationTimestamp"] = created.isoformat()
    if phase is not None:
        doc["status"] = {
            "phase": phase,
            "routingKey": key,
            "observedGeneration": observed,
            "conditions": list(conditions),
        }
    return doc


# --- retries ---------------------------------------------------------------------------------


def test_get_retries_503_then_succeeds_with_bounded_jittered_sleeps() -> None:
    api = make_api()
    script = [err(503, "Unavailable", "busy"), err(503, "Unavailable", "busy"), ok(sandbox_doc())]
    result, requests, sleeps = drive(api.get(SANDBOXES, "sb"), script)
    assert result.metadata.name == "sb"
    assert [r.what for r in requests] == ["GET /api/v1/sandboxes/sb"] * 3
    assert len(sleeps) == 2
    assert 0 <= sleeps[0] <= 0.1 and 0 <= sleeps[1] <= 0.2


def test_retries_are_bounded_and_the_error_names_the_server() -> None:
    api = make_api(attempts=3)
    failure = TransportFailure("connection refused", sent=False)
    with pytest.raises(Unavailable) as info:
        drive(api.get(SANDBOXES, "sb"), [failure] * 3)
    assert "http://cp.test" in str(info.value)
    assert "connection refused" in str(info.value)
    assert "3 attempts" in str(info.value)


def test_connect_failure_on_create_is_retried() -> None:
    api = make_api()
    sb = build_sandbox(["pricing=127.0.0.1:9000"], name="sb")
    script = [TransportFailure("refused", sent=False), ok(sandbox_doc(), 201)]
    result, requests, _ = drive(api.create(SANDBOXES, sb), script)
    assert result.metadata.name == "sb"
    assert len(requests) == 2


def test_create_is_not_resent_after_it_may_have_arrived() -> None:
    api = make_api()
    sb = build_sandbox(["pricing=127.0.0.1:9000"], name="sb")
    with pytest.raises(Unavailable):
        drive(api.create(SANDBOXES, sb), [TransportFailure("read timeout", sent=True)])
    with pytest.raises(Unavailable, match="gateway"):
        drive(api.create(SANDBOXES, sb), [err(502, "Unavailable", "bad gateway")])


def test_delete_is_retried_after_a_read_timeout() -> None:
    api = make_api()
    script = [TransportFailure("read timeout", sent=True), Response(200, b"")]
    _, requests, _ = drive(api.delete(SANDBOXES, "sb"), script)
    assert [r.method for r in requests] == ["DELETE", "DELETE"]


def test_client_errors_are_not_retried() -> None:
    api = make_api()
    with pytest.raises(NotFound):
        drive(api.get(SANDBOXES, "sb"), [err(404, "NotFound", "sandbox 'sb' not found")])


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason", "cls"),
    [
        (400, "BadRequest", Invalid),
        (401, "Unauthorized", Unauthorized),
        (403, "Forbidden", Forbidden),
        (404, "NotFound", NotFound),
        (409, "Conflict", Conflict),
        (412, "PreconditionFailed", Conflict),
        (422, "Invalid", Invalid),
        (503, "Unavailable", Unavailable),
        (500, "Internal", ForklaneError),
    ],
)
def test_error_class_by_status_keeps_the_servers_reason(
    status: int, reason: str, cls: type[ForklaneError]
) -> None:
    error = error_from_response(status, err(status, reason, "the reason").body, "GET /x")
    assert type(error) is cls
    assert error.status == status and error.reason == reason
    assert str(error) == "the reason"


def test_invalid_carries_field_paths() -> None:
    details = [
        {"field": "spec.forks[0].endpoints", "message": "at least 1 item"},
        {"field": "metadata.name", "message": "bad name"},
    ]
    error = error_from_response(422, err(422, "Invalid", "sandbox is invalid", details).body, "x")
    assert isinstance(error, Invalid)
    assert error.fields == [
        ("spec.forks[0].endpoints", "at least 1 item"),
        ("metadata.name", "bad name"),
    ]
    assert "spec.forks[0].endpoints: at least 1 item" in str(error)


def test_a_body_that_is_not_ours_still_gives_a_readable_line() -> None:
    error = error_from_response(502, b"<html>\nBad Gateway</html>", "GET /api/v1/sandboxes")
    assert isinstance(error, Unavailable)
    assert str(error) == "GET /api/v1/sandboxes answered HTTP 502: <html>"


def test_an_unexpected_answer_shape_is_a_forklane_error_not_a_pydantic_one() -> None:
    api = make_api()
    with pytest.raises(ForklaneError, match="unexpected answer"):
        drive(api.get(SANDBOXES, "sb"), [ok({"kind": "Sandbox"})])
    with pytest.raises(ForklaneError, match="not JSON"):
        drive(api.get(SANDBOXES, "sb"), [Response(200, b"<html>")])


# --- listing ---------------------------------------------------------------------------------


def test_list_follows_continue_tokens_and_sends_the_selector() -> None:
    api = make_api()
    page1 = {"kind": "SandboxList", "items": [sandbox_doc()], "metadata": {"continue": "sb"}}
    page2 = {"kind": "SandboxList", "items": [sandbox_doc()], "metadata": {}}
    items, requests, _ = drive(api.list(SANDBOXES, {"team": "pay"}), [ok(page1), ok(page2)])
    assert len(items) == 2
    assert ("labelSelector", "team=pay") in requests[0].params
    assert ("continue", "sb") in requests[1].params
    assert not any(k == "continue" for k, _ in requests[0].params)


def test_apply_creates_when_missing_and_replaces_spec_when_present() -> None:
    api = make_api()
    split_doc = {
        "kind": "Split",
        "metadata": {"name": "pricing", "resourceVersion": "9", "generation": 2},
        "spec": {"service": "pricing", "destinations": []},
    }
    wanted = Split.model_validate(
        {
            "metadata": {"name": "pricing"},
            "spec": {
                "service": "pricing",
                "destinations": [{"name": "v2", "weight": 10, "endpoints": ["h:1"]}],
            },
        }
    )
    _, requests, _ = drive(
        api.apply(SPLITS, wanted), [err(404, "NotFound", "no"), ok(split_doc, 201)]
    )
    assert [r.method for r in requests] == ["GET", "POST"]

    _, requests, _ = drive(api.apply(SPLITS, wanted), [ok(split_doc), ok(split_doc)])
    assert [r.method for r in requests] == ["GET", "PUT"]
    sent = json.loads(requests[1].body or b"")
    assert sent["metadata"]["resourceVersion"] == "9"
    assert sent["spec"]["destinations"][0]["name"] == "v2"


# --- waiting ---------------------------------------------------------------------------------


def test_wait_ready_polls_until_ready() -> None:
    clock = FakeClock()
    api = make_api(clock)
    script = [ok(sandbox_doc("Pending")), ok(sandbox_doc("Pending")), ok(sandbox_doc("Ready"))]
    result, requests, sleeps = drive(api.wait_ready("sb", 10), script, clock)
    assert result.status is not None and result.status.phase == "Ready"
    assert len(requests) == 3 and len(sleeps) == 2


def test_wait_ready_ignores_ready_for_an_older_generation() -> None:
    clock = FakeClock()
    api = make_api(clock)
    stale = ok(sandbox_doc("Ready", generation=2, observed=1))
    fresh = ok(sandbox_doc("Ready", generation=2, observed=2))
    _, requests, _ = drive(api.wait_ready("sb", 10), [stale, fresh], clock)
    assert len(requests) == 2


def test_wait_ready_timeout_names_last_phase_and_conditions() -> None:
    clock = FakeClock()
    api = make_api(clock)
    cond = {
        "type": "Ready",
        "status": "False",
        "reason": "ForkUnreachable",
        "message": "pricing: 127.0.0.1:9000 refused",
    }
    pending = ok(sandbox_doc("Pending", conditions=[cond]))
    with pytest.raises(WaitTimeout) as info:
        drive(api.wait_ready("sb", 2.0), [pending] * 100, clock)
    text = str(info.value)
    assert "not Ready after 2s" in text
    assert "phase Pending" in text
    assert "ForkUnreachable" in text and "127.0.0.1:9000 refused" in text
    assert clock.now == pytest.approx(2.0)


def test_wait_ready_stops_at_failed() -> None:
    clock = FakeClock()
    api = make_api(clock)
    cond = {"type": "Ready", "status": "False", "reason": "InvalidFork", "message": "no svc"}
    with pytest.raises(SandboxFailed, match="InvalidFork"):
        drive(api.wait_ready("sb", 10), [ok(sandbox_doc("Failed", conditions=[cond]))], clock)


def test_wait_ready_stops_at_once_on_a_reason_waiting_cannot_change() -> None:
    clock = FakeClock()
    api = make_api(clock)
    unresolvable = {"type": "Reachable", "status": "False", "reason": "ForkUnresolvable",
                    "message": "nope.invalid:80: no such host"}  # fmt: skip
    with pytest.raises(SandboxFailed, match=r"cannot become Ready \(ForkUnresolvable\)"):
        drive(api.wait_ready("sb", 60), [ok(sandbox_doc("Pending", conditions=[unresolvable]))],
              clock)  # fmt: skip
    assert clock.now == 0  # no waiting at all
    # for an older generation the reason may be stale: keep waiting
    stale = ok(sandbox_doc("Pending", generation=2, observed=1, conditions=[unresolvable]))
    fresh = ok(sandbox_doc("Ready", generation=2, observed=2))
    result, _, _ = drive(api.wait_ready("sb", 60), [stale, fresh], clock)
    assert result.status is not None and result.status.phase == "Ready"


def test_waiting_reason_names_the_first_condition_that_is_not_met() -> None:
    ready = {"type": "Ready", "status": "False", "reason": "NotReady", "message": ""}
    compiled = {"type": "Compiled", "status": "True", "reason": "Compiled", "message": ""}
    routed = {"type": "Routed", "status": "False", "reason": "WaitingForAck",
              "message": "proxies have not acknowledged the snapshot yet"}  # fmt: skip
    sb = Sandbox.model_validate(sandbox_doc("Pending", conditions=[compiled, routed, ready]))
    assert waiting_reason(sb) == (
        "Pending: WaitingForAck (proxies have not acknowledged the snapshot yet)")  # fmt: skip
    assert waiting_reason(Sandbox.model_validate(sandbox_doc(None))) == "Pending: no status yet"
    assert waiting_reason(Sandbox.model_validate(sandbox_doc("Ready"))) == "Ready"
    assert hard_failure(sb) is None


# --- extend ----------------------------------------------------------------------------------


def test_extend_sets_ttl_from_creation_and_retries_on_conflict() -> None:
    api = make_api()
    created = NOW - timedelta(minutes=30)
    doc = sandbox_doc("Ready", created=created)
    script = [ok(doc), err(409, "Conflict", "changed"), ok(doc), ok(doc)]
    _, requests, sleeps = drive(api.extend("sb", "2h"), script)
    assert [r.method for r in requests] == ["GET", "PUT", "GET", "PUT"]
    assert len(sleeps) == 1  # backs off before re-reading
    sent = json.loads(requests[-1].body or b"")
    assert sent["spec"]["ttl"] == {"seconds": 30 * 60 + 2 * 3600, "since": "creation"}


def test_extend_beyond_thirty_days_is_refused_before_sending() -> None:
    api = make_api()
    doc = sandbox_doc("Ready", created=NOW - timedelta(days=29, hours=23))
    with pytest.raises(ValueError, match="30 days"):
        drive(api.extend("sb", "2h"), [ok(doc)])


# --- pure helpers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("90s", 90),
        ("15m", 900),
        ("2h", 7200),
        ("1d", 86400),
        ("1h30m", 5400),
        ("0.5s", 1),
        (timedelta(minutes=2), 120),
        (45, 45),
    ],
)
def test_parse_duration(text: Any, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "2x", "-5", "0", "1h 30m", "h"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_routing_headers_carry_the_key_in_the_header_and_baggage() -> None:
    assert routing_headers("abc123") == {
        "x-forklane-routing-key": "abc123",
        "baggage": "forklane-routing-key=abc123",
    }


def test_build_sandbox_from_fork_strings_and_defaults() -> None:
    sb = build_sandbox(
        ["pricing=127.0.0.1:9000,127.0.0.1:9001"], labels={"team": "pay"}, default_ttl="1h"
    )
    assert sb.metadata.name.startswith("sandbox-")
    assert sb.metadata.labels == {"team": "pay"}
    assert sb.spec.forks[0].endpoints == ["127.0.0.1:9000", "127.0.0.1:9001"]
    assert sb.spec.ttl is not None and sb.spec.ttl.seconds == 3600


def test_build_sandbox_keeps_the_specs_own_ttl_over_the_default() -> None:
    spec = SandboxSpec.model_validate(
        {"forks": [{"service": "a", "endpoints": ["h:1"]}], "ttl": {"seconds": 60}}
    )
    sb = build_sandbox(spec=spec, name="x", default_ttl="1h")
    assert sb.spec.ttl is not None and sb.spec.ttl.seconds == 60
    sb = build_sandbox(spec=spec, name="x", ttl="2m", routing_key="mykey")
    assert sb.spec.ttl is not None and sb.spec.ttl.seconds == 120
    assert sb.spec.routing_key == "mykey"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"forks": ["pricing"]}, "SERVICE=HOST:PORT"),
        ({"forks": ["pricing=nohostport"]}, "endpoint .nohostport.: expected HOST:PORT"),
        ({"forks": ["pricing=h:99999"]}, "port in 1..65535"),
        ({"forks": [], "name": "x"}, "forks"),
        ({}, "exactly one"),
        ({"forks": ["a=h:1"], "name": "Bad_Name"}, "name"),
        ({"forks": ["a=h:1", "a=h:2"]}, "once per sandbox"),
    ],
)
def test_build_sandbox_rejects_bad_input_with_a_reason(kwargs: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_sandbox(**kwargs)


def test_handle_prefers_the_generated_key_from_status() -> None:
    sb = Sandbox.model_validate(sandbox_doc("Ready", key="generated1"))
    handle = handle_for(sb)
    assert handle.routing_key == "generated1"
    assert handle.headers["x-forklane-routing-key"] == "generated1"
    assert handle.name == "sb"
