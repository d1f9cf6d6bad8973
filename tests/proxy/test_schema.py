"""The routing snapshot schema: every invariant it promises is enforced, with a message that
names the field, and no input makes validation fail with anything but a ValidationError."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from forklane.proxy.loader import format_validation_error
from forklane.proxy.routing import RequestView, decide
from forklane.proxy.schema import DEFAULT_CARRIERS, RoutingSnapshot, parse_endpoint
from forklane.proxy.table import build_table

VALID: dict[str, Any] = {
    "version": "v1",
    "carriers": [
        {"kind": "header", "name": "x-forklane-routing-key"},
        {"kind": "baggage", "name": "forklane-routing-key"},
        {"kind": "tracestate", "name": "forklane"},
    ],
    "services": [
        {"name": "catalog", "authorities": ["catalog.prod:8080"], "endpoints": ["10.0.0.1:80"]},
        {"name": "pricing", "endpoints": ["10.0.0.2:80"]},
    ],
    "forks": [{"routing_key": "alice", "service": "pricing", "endpoints": ["10.1.0.1:80"]}],
    "splits": [
        {
            "name": "canary",
            "service": "catalog",
            "match": {"headers": [{"name": "x-beta", "exact": "1"}]},
            "destinations": [{"name": "v2", "weight": 1, "endpoints": ["10.2.0.1:80"]}],
            "sticky": {"header": "x-user"},
        }
    ],
    "mirrors": [
        {"name": "shadow", "service": "pricing", "percent": 5, "endpoints": ["10.3.0.1:80"]}
    ],
}


def _doc(path: str, value: Any) -> dict[str, Any]:
    """VALID with one field replaced; `path` is dotted, list indexes as numbers."""
    doc = copy.deepcopy(VALID)
    parts = path.split(".")
    node: Any = doc
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    last = parts[-1]
    if last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return doc


def _error(doc: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        RoutingSnapshot.model_validate(doc)
    return format_validation_error(info.value)


def test_valid_snapshot_round_trips() -> None:
    snap = RoutingSnapshot.model_validate(VALID)
    assert RoutingSnapshot.model_validate(snap.model_dump()) == snap
    assert RoutingSnapshot.model_validate_json(snap.model_dump_json()) == snap


def test_defaults() -> None:
    snap = RoutingSnapshot.model_validate({"version": "1"})
    assert snap.carriers == DEFAULT_CARRIERS
    assert (snap.services, snap.forks, snap.splits, snap.mirrors) == ((), (), (), ())
    svc = RoutingSnapshot.model_validate(VALID).services[1]
    assert (svc.lb, svc.timeouts.connect, svc.timeouts.request) == ("round_robin", 1.0, 15.0)
    fork = RoutingSnapshot.model_validate(VALID).forks[0]
    assert fork.fallback == "fail"


def test_normalisation() -> None:
    doc = _doc("services.0.authorities", ["  Catalog.PROD:8080 "])
    doc["splits"][0]["match"]["methods"] = ["get", "Post"]
    snap = RoutingSnapshot.model_validate(doc)
    assert snap.services[0].authorities == ("catalog.prod:8080",)
    assert snap.splits[0].match.methods == ("GET", "POST")


def test_snapshot_is_frozen() -> None:
    snap = RoutingSnapshot.model_validate(VALID)
    with pytest.raises(ValidationError):
        setattr(snap, "version", "v2")  # noqa: B010 - the attribute is read-only on purpose


# (path to replace, new value, text the message must contain: the field and the reason)
INVALID = [
    # snapshot
    ("version", "", "version"),
    ("version", "v" * 129, "version"),
    ("services.1.name", "catalog", "duplicate service 'catalog'"),
    ("services.1.authorities", ["catalog.prod:8080"], "authority 'catalog.prod:8080' names both"),
    ("services.1.authorities", ["catalog"], "authority 'catalog' names both"),
    ("forks.0.service", "inventory", "forks[0]: unknown service 'inventory'"),
    ("splits.0.service", "inventory", "splits[0]: unknown service 'inventory'"),
    ("mirrors.0.service", "inventory", "mirrors[0]: unknown service 'inventory'"),
    (
        "forks",
        [
            {"routing_key": "alice", "service": "pricing", "endpoints": ["10.1.0.1:80"]},
            {"routing_key": "alice", "service": "pricing", "endpoints": ["10.1.0.2:80"]},
        ],
        "forks[1]: key 'alice' already forks 'pricing'",
    ),
    (
        "mirrors",
        [
            {"name": "shadow", "service": "pricing", "percent": 5, "endpoints": ["h:2"]},
            {"name": "shadow", "service": "pricing", "percent": 1, "endpoints": ["h:1"]},
        ],
        "mirrors[1]: duplicate name 'shadow'",
    ),
    (
        "carriers",
        [{"kind": "header", "name": "x-k"}, {"kind": "header", "name": "x-k", "emit": False}],
        "carriers: duplicate carrier",
    ),
    ("unexpected", 1, "unexpected"),
    # services
    ("services.0.name", "Catalog", "services.0.name"),
    ("services.0.name", "-catalog", "services.0.name"),
    ("services.0.name", "", "services.0.name"),
    ("services.0.authorities", ["catalog prod"], "services.0.authorities"),
    ("services.0.authorities", [""], "services.0.authorities"),
    ("services.0.namespace_authorities", ["catalog"], "namespace_authorities need a namespace"),
    ("services.0.ports", [{"port": 80}, {"port": 80}], "each port at most once"),
    ("services.0.ports", [{"port": 0}], "services.0.ports.0.port"),
    ("services.0.ports", [{"port": 81, "endpoints": ["h"]}], "services.0.ports.0.endpoints"),
    ("services.0.endpoints", ["10.0.0.1"], "expected host:port"),
    ("services.0.endpoints", [":80"], "expected host:port"),
    ("services.0.endpoints", ["10.0.0.1:0"], "port must be 1..65535"),
    ("services.0.endpoints", ["10.0.0.1:65536"], "port must be 1..65535"),
    ("services.0.endpoints", ["10.0.0.1:http"], "port must be 1..65535"),
    ("services.0.endpoints", ["10.0.0.1:-1"], "port must be 1..65535"),
    ("services.0.endpoints", ["[fd00::1]"], "expected [ipv6]:port"),
    ("services.0.endpoints", ["[fd00::1:80"], "expected [ipv6]:port"),
    ("services.0.lb", "random", "services.0.lb"),
    ("services.0.timeouts", {"connect": 0}, "services.0.timeouts.connect"),
    ("services.0.timeouts", {"request": 3601}, "services.0.timeouts.request"),
    # forks
    ("forks.0.routing_key", "", "forks.0.routing_key"),
    ("forks.0.routing_key", "-alice", "forks.0.routing_key"),
    ("forks.0.routing_key", "al ice", "forks.0.routing_key"),
    ("forks.0.routing_key", "a=b", "forks.0.routing_key"),
    ("forks.0.routing_key", "a,b", "forks.0.routing_key"),
    ("forks.0.routing_key", "a" * 129, "forks.0.routing_key"),
    ("forks.0.endpoints", ["nowhere"], "forks.0.endpoints"),
    ("forks.0.fallback", "retry", "forks.0.fallback"),
    # splits
    ("splits.0.destinations", [], "splits.0.destinations"),
    (
        "splits.0.destinations",
        [
            {"name": "a", "weight": 0, "endpoints": ["h:1"]},
            {"name": "b", "weight": 0, "endpoints": ["h:2"]},
        ],
        "at least one destination needs a positive weight",
    ),
    ("splits.0.destinations.0.weight", -1, "splits.0.destinations.0.weight"),
    ("splits.0.destinations.0.weight", 1_000_001, "splits.0.destinations.0.weight"),
    ("splits.0.destinations.0.endpoints", ["h:99999"], "splits.0.destinations.0.endpoints"),
    (
        "splits.0.destinations",
        [
            {"name": "a", "weight": 1, "endpoints": ["h:1"]},
            {"name": "a", "weight": 1, "endpoints": ["h:2"]},
        ],
        "destination names must be unique",
    ),
    (
        "splits.0.match.headers.0",
        {"name": "x-beta", "exact": "1", "prefix": "1"},
        "splits.0.match.headers.0",
    ),
    ("splits.0.match.headers.0", {"name": "x-beta"}, "set exactly one of exact, prefix, present"),
    ("splits.0.match.headers.0", {"name": "X-Beta", "present": True}, "lowercase token"),
    ("splits.0.match.headers.0", {"name": "x beta", "present": True}, "lowercase token"),
    ("splits.0.match.path_prefix", "api", "splits.0.match.path_prefix"),
    ("splits.0.sticky", {}, "set exactly one of header, cookie"),
    ("splits.0.sticky", {"header": "x-user", "cookie": "uid"}, "set exactly one of header, cookie"),
    ("splits.0.sticky", {"header": "X-User"}, "splits.0.sticky"),
    # mirrors
    ("mirrors.0.percent", 100.5, "mirrors.0.percent"),
    ("mirrors.0.percent", -1, "mirrors.0.percent"),
    ("mirrors.0.percent", float("nan"), "mirrors.0.percent"),
    ("mirrors.0.endpoints", [], "mirrors.0.endpoints"),
    # carriers
    ("carriers.0", {"kind": "header", "name": "X-Key"}, "must be a lowercase token"),
    ("carriers.0", {"kind": "header", "name": "x key"}, "must be a lowercase token"),
    ("carriers.0", {"kind": "header", "name": "baggage"}, "reserved header"),
    ("carriers.0", {"kind": "header", "name": "host"}, "reserved header"),
    ("carriers.0", {"kind": "header", "name": "traceparent"}, "reserved header"),
    ("carriers.0", {"kind": "baggage", "name": "a=b"}, "baggage carrier 'a=b': not a token"),
    ("carriers.0", {"kind": "baggage", "name": ""}, "not a token"),
    ("carriers.0", {"kind": "tracestate", "name": "Forklane"}, "not a valid tracestate key"),
    ("carriers.0", {"kind": "tracestate", "name": "a@B"}, "not a valid tracestate key"),
    ("carriers.0", {"kind": "cookie", "name": "k"}, "carriers.0.kind"),
]


@pytest.mark.parametrize(
    ("path", "value", "message"),
    INVALID,
    ids=[f"{p}={v!r}"[:60] for p, v, _ in INVALID],
)
def test_invalid_snapshot_is_rejected_naming_the_field(path: str, value: Any, message: str) -> None:
    assert message in _error(_doc(path, value))


@pytest.mark.parametrize(
    "value",
    ["a", "A-1", "a.b_c-d", "a" * 128, "0"],
)
def test_routing_keys_accepted(value: str) -> None:
    RoutingSnapshot.model_validate(_doc("forks.0.routing_key", value))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1:80", ("10.0.0.1", 80)),
        ("catalog.svc:8080", ("catalog.svc", 8080)),
        ("[fd00::1]:443", ("fd00::1", 443)),
        (" host:1 ", ("host", 1)),
        ("h:65535", ("h", 65535)),
    ],
)
def test_parse_endpoint(text: str, expected: tuple[str, int]) -> None:
    assert parse_endpoint(text) == expected


def test_header_carrier_name_with_trailing_newline_is_rejected() -> None:
    _error(_doc("carriers.0", {"kind": "header", "name": "x-key\n"}))


def test_routing_key_with_trailing_newline_is_rejected() -> None:
    _error(_doc("forks.0.routing_key", "alice\n"))


def test_service_name_with_trailing_newline_is_rejected() -> None:
    doc = copy.deepcopy(VALID)
    doc["services"].append({"name": "inventory\n", "endpoints": ["h:1"]})
    _error(doc)


def test_endpoint_with_empty_ipv6_host_is_rejected() -> None:
    _error(_doc("services.0.endpoints", ["[]:80"]))


def test_authority_owned_by_two_services_through_port_80_is_rejected() -> None:
    doc = copy.deepcopy(VALID)
    doc["services"].append({"name": "b", "authorities": ["pricing:80"], "endpoints": ["h:1"]})
    assert "pricing:80" in _error(doc)


# --- Hypothesis: any route spec validates and builds, or is a ValidationError --------------


def _mostly(valid: st.SearchStrategy[Any], wild: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Valid 29 times in 30, so deep snapshots validate often enough to build."""
    return st.sampled_from([True] * 29 + [False]).flatmap(lambda ok: valid if ok else wild)


_SERVICE_NAMES = ["catalog", "pricing", "web", "b.c", "x-1"]
_names = _mostly(
    st.sampled_from(_SERVICE_NAMES),
    st.one_of(st.sampled_from(["", "Bad", "-x", "a" * 300, "a b", "a\n"]), st.text(max_size=8)),
)
_endpoint = _mostly(
    st.sampled_from(["10.0.0.1:80", "h:1", "[fd00::1]:8080", "h:65535", "[::1]:1", " h:2"]),
    st.one_of(
        st.sampled_from(
            ["h", "h:0", ":80", "[]:80", "[x", "h:99999", "h:\u0668\u0660", "h:\u00b2"]
        ),
        st.builds(lambda h, p: f"{h}:{p}", st.text(max_size=6), st.integers(-5, 70_000)),
        st.text(max_size=12),
    ),
)
_endpoints = _mostly(st.lists(_endpoint, min_size=1, max_size=3), st.lists(_endpoint, max_size=0))
_authority = _mostly(
    st.sampled_from(["catalog.prod", "web:8080", "[fd00::1]", "a.b:80", "HOST:1", "[", ":80"]),
    st.text(alphabet="abc:[]._-80 ", max_size=8),
)
_header_name = _mostly(
    st.sampled_from(["x-user", "x-beta", "cookie", "user-agent"]),
    st.one_of(st.sampled_from(["X-Up", "", "a b", "baggage", "x\n"]), st.text(max_size=6)),
)
_timeouts = _mostly(
    st.fixed_dictionaries(
        {},
        optional={
            "connect": st.floats(0.01, 60),
            "request": st.floats(0.01, 3600),
            "idle": st.integers(1, 3600),
        },
    ),
    st.fixed_dictionaries(
        {},
        optional={
            "connect": st.floats(allow_nan=True),
            "request": st.one_of(st.floats(-1, 4000), st.text(max_size=3)),
            "idle": st.integers(-1, 4000),
        },
    ),
)
_header_match = _mostly(
    st.one_of(
        st.builds(lambda n, v: {"name": n, "exact": v}, _header_name, st.text(max_size=4)),
        st.builds(lambda n, v: {"name": n, "prefix": v}, _header_name, st.text(max_size=4)),
        st.builds(lambda n, v: {"name": n, "present": v}, _header_name, st.booleans()),
    ),
    st.fixed_dictionaries(
        {"name": _header_name},
        optional={
            "exact": st.text(max_size=4),
            "prefix": st.text(max_size=4),
            "present": st.booleans(),
        },
    ),
)
_match = st.fixed_dictionaries(
    {},
    optional={
        "headers": st.lists(_header_match, max_size=2),
        "path_prefix": _mostly(st.sampled_from(["/", "/api"]), st.sampled_from(["api", "", None])),
        "methods": st.lists(st.sampled_from(["GET", "post", "", "PUT"]), max_size=2),
    },
)
_lb = _mostly(st.sampled_from(["round_robin", "least_request"]), st.just("random"))
_service = st.fixed_dictionaries(
    {"name": _names, "endpoints": _endpoints},
    optional={
        "authorities": st.lists(_authority, max_size=3),
        "lb": _lb,
        "timeouts": _timeouts,
    },
)
_key = _mostly(
    st.sampled_from(["alice", "bob-1", "C.3_x"]),
    st.one_of(st.sampled_from(["", "-x", "a\n", "a" * 129, "a b"]), st.text(max_size=6)),
)


def _fork(service: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"routing_key": _key, "service": service, "endpoints": _endpoints},
        optional={
            "fallback": _mostly(st.sampled_from(["baseline", "fail"]), st.just("other")),
            "sandbox": st.text(max_size=4),
            "lb": _lb,
            "timeouts": _timeouts,
        },
    )


_destination = st.fixed_dictionaries(
    {
        "name": _names,
        "weight": _mostly(
            st.integers(1, 100), st.one_of(st.integers(-2, 1_000_002), st.floats(-1, 10))
        ),
        "endpoints": _endpoints,
    },
    optional={"lb": _lb, "timeouts": _timeouts},
)
_sticky = _mostly(
    st.one_of(
        st.builds(lambda h: {"header": h}, _header_name),
        st.builds(lambda c: {"cookie": c}, st.text(max_size=4)),
    ),
    st.fixed_dictionaries({}, optional={"header": _header_name, "cookie": st.text(max_size=4)}),
)


def _split(service: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "name": _names,
            "service": service,
            "destinations": _mostly(
                st.lists(_destination, min_size=1, max_size=3, unique_by=lambda d: str(d["name"])),
                st.lists(_destination, max_size=3),
            ),
        },
        optional={"match": _match, "sticky": st.one_of(st.none(), _sticky)},
    )


def _mirror(service: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "name": _names,
            "service": service,
            "percent": _mostly(
                st.floats(0, 100), st.one_of(st.floats(allow_nan=True), st.integers(-1, 101))
            ),
            "endpoints": _endpoints,
        },
        optional={"match": _match, "timeouts": _timeouts},
    )


_carrier = _mostly(
    st.sampled_from(
        [
            {"kind": "header", "name": "x-forklane-routing-key"},
            {"kind": "baggage", "name": "forklane-routing-key", "emit": False},
            {"kind": "tracestate", "name": "forklane"},
            {"kind": "tracestate", "name": "sd@vendor"},
            {"kind": "header", "name": "x-k"},
        ]
    ),
    st.fixed_dictionaries(
        {
            "kind": st.sampled_from(["header", "baggage", "tracestate", "cookie"]),
            "name": st.one_of(
                st.sampled_from(["host", "", "Upper", "a=b", "sd@vendor"]), st.text(max_size=8)
            ),
        },
        optional={"emit": st.booleans()},
    ),
)


@st.composite
def _snapshots(draw: st.DrawFn) -> dict[str, Any]:
    """A route spec whose routes mostly name services it declares, so many of them build."""
    doc: dict[str, Any] = {
        "version": draw(
            _mostly(
                st.sampled_from(["v1", "sha256:abc"]), st.one_of(st.text(max_size=3), st.integers())
            )
        )
    }
    services = draw(
        _mostly(
            st.lists(_service, min_size=1, max_size=3, unique_by=lambda s: str(s["name"])),
            st.lists(_service, max_size=3),
        )
    )
    doc["services"] = services
    known = sorted({str(s["name"]) for s in services}) or ["catalog"]
    service = _mostly(st.sampled_from(known), _names)
    if draw(st.booleans()):
        doc["carriers"] = draw(
            _mostly(st.lists(_carrier, max_size=3, unique_by=str), st.lists(_carrier))
        )
    doc["forks"] = draw(st.lists(_fork(service), max_size=3))
    doc["splits"] = draw(st.lists(_split(service), max_size=2))
    doc["mirrors"] = draw(st.lists(_mirror(service), max_size=2))
    return doc


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=_snapshots())
def test_any_route_spec_validates_and_builds_or_is_a_validation_error(doc: dict[str, Any]) -> None:
    try:
        snap = RoutingSnapshot.model_validate(doc)
    except ValidationError as exc:
        assert format_validation_error(exc)  # the operator's message is never empty
        return
    table = build_table(snap)
    for name, svc in table.services.items():
        view = RequestView("outbound", "GET", "/", name, {})
        decision = decide(view, table, lambda: 0.5)
        assert decision.route.service == name
        if snap_service(snap, name).endpoints:
            assert decision.route.destination is not None
            assert svc.baseline.destination is not None and svc.baseline.destination.endpoints
        else:  # a service with no endpoints is known; its baseline answers 503 no-endpoints
            assert (svc.baseline.kind, svc.baseline.status) == ("reject", 503)
            assert svc.baseline.error == "no-endpoints"


def snap_service(snap: RoutingSnapshot, name: str) -> Any:
    return next(s for s in snap.services if s.name == name)


@settings(max_examples=100, deadline=None)
@given(
    doc=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
        ),
        max_leaves=12,
    )
)
def test_arbitrary_json_is_valid_or_a_validation_error(doc: Any) -> None:
    try:
        RoutingSnapshot.model_validate(doc)
    except ValidationError:
        pass
