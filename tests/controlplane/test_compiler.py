"""Compiler tables: resources → snapshot; a broken resource is isolated, never fatal."""

from __future__ import annotations

from typing import Any

import pytest

from forklane.controlplane import wire
from forklane.controlplane.compiler import Inputs, compile_snapshot


def svc(name: str, *authorities: str, endpoint: str = "10.0.0.1:80") -> wire.ServiceResource:
    return wire.ServiceResource.model_validate(
        {"metadata": {"name": name},
         "spec": {"endpoints": [endpoint], "authorities": list(authorities)}}
    )


def sb(
    name: str, key: str, *services: str, labels: dict[str, str] | None = None,
    phase: str = "Pending", fallback: str = "fail",
) -> wire.Sandbox:
    return wire.Sandbox.model_validate(
        {
            "metadata": {"name": name, "labels": labels or {}},
            "spec": {
                "routingKey": key,
                "fallback": fallback,
                "forks": [{"service": s, "endpoints": [f"10.1.0.1:{8000 + i}"]}
                          for i, s in enumerate(services)],
            },
            "status": {"phase": phase},
        }
    )


def group(name: str, key: str, selector: dict[str, str]) -> wire.RouteGroup:
    return wire.RouteGroup.model_validate(
        {"metadata": {"name": name}, "spec": {"selector": selector, "routingKey": key}}
    )


def split(name: str, service: str, **extra: Any) -> wire.Split:
    spec = {"service": service,
            "destinations": [{"name": "v1", "weight": 90, "endpoints": ["10.2.0.1:80"]},
                             {"name": "v2", "weight": 10, "endpoints": ["10.2.0.2:80"]}],
            **extra}
    return wire.Split.model_validate({"metadata": {"name": name}, "spec": spec})


def test_empty_store_compiles_to_empty_snapshot() -> None:
    out = compile_snapshot(Inputs(revision=7))
    assert out.snapshot.version == "7" and out.snapshot.forks == () and out.problems == {}


def test_sandbox_forks_and_fallback() -> None:
    out = compile_snapshot(
        Inputs(revision=3, services=[svc("web"), svc("api")],
               sandboxes=[sb("b", "keyb", "web", fallback="baseline"), sb("a", "keya", "api", "web")])
    )
    forks = [(f.routing_key, f.service, f.sandbox, f.fallback) for f in out.snapshot.forks]
    assert forks == [
        ("keya", "api", "a", "fail"),
        ("keya", "web", "a", "fail"),
        ("keyb", "web", "b", "baseline"),
    ]
    assert out.problems == {}


def test_deterministic_whatever_the_input_order() -> None:
    services = [svc("web"), svc("api", "api.local")]
    sandboxes = [sb("a", "k1", "web"), sb("b", "k2", "api")]
    one = compile_snapshot(Inputs(revision=1, services=services, sandboxes=sandboxes))
    two = compile_snapshot(Inputs(revision=1, services=services[::-1], sandboxes=sandboxes[::-1]))
    assert one.snapshot == two.snapshot


def test_terminating_sandbox_is_withdrawn() -> None:
    out = compile_snapshot(
        Inputs(revision=1, services=[svc("web")],
               sandboxes=[sb("gone", "k", "web", phase="Terminating"), sb("live", "l", "web")])
    )
    assert [f.sandbox for f in out.snapshot.forks] == ["live"]


@pytest.mark.parametrize(
    ("inputs", "broken", "reason", "kept_forks"),
    [
        (  # fork of a service that does not exist
            Inputs(revision=1, services=[svc("web")],
                   sandboxes=[sb("bad", "k1", "ghost"), sb("good", "k2", "web")]),
            ("sandboxes", "bad"), "unknown service 'ghost'", ["good"],
        ),
        (  # the same routing key twice: the first by name keeps it
            Inputs(revision=1, services=[svc("web")],
                   sandboxes=[sb("a", "same", "web"), sb("b", "same", "web")]),
            ("sandboxes", "b"), "already used by sandboxes/a", ["a"],
        ),
        (  # two forks of one service in one route group
            Inputs(revision=1, services=[svc("web")],
                   sandboxes=[sb("a", "k1", "web", labels={"g": "1"}),
                              sb("b", "k2", "web", labels={"g": "1"})],
                   routegroups=[group("grp", "gk", {"g": "1"})]),
            ("routegroups", "grp"), "forked by both", ["a", "b"],
        ),
        (  # an authority claimed by two services
            Inputs(revision=1, services=[svc("api", "shared.local"), svc("web", "shared.local")],
                   sandboxes=[sb("a", "k1", "api")]),
            ("services", "web"), "already names service 'api'", ["a"],
        ),
    ],
)
def test_broken_resource_is_isolated(
    inputs: Inputs, broken: tuple[str, str], reason: str, kept_forks: list[str]
) -> None:
    out = compile_snapshot(inputs)
    assert list(out.problems) == [broken]
    assert reason in out.problems[broken]
    assert sorted({f.sandbox for f in out.snapshot.forks}) == kept_forks


def test_route_group_joins_matching_sandboxes() -> None:
    out = compile_snapshot(
        Inputs(
            revision=5,
            services=[svc("web"), svc("api")],
            sandboxes=[sb("a", "k1", "web", labels={"feature": "x"}),
                       sb("b", "k2", "api", labels={"feature": "x", "team": "t"}),
                       sb("c", "k3", "api", labels={"feature": "y"})],
            routegroups=[group("fx", "groupkey", {"feature": "x"})],
        )
    )
    grouped = [(f.service, f.endpoints) for f in out.snapshot.forks if f.routing_key == "groupkey"]
    assert grouped == [("api", ("10.1.0.1:8000",)), ("web", ("10.1.0.1:8000",))]
    assert out.group_members == {"fx": ("a", "b")}
    assert all(f.sandbox == "fx" and f.fallback == "baseline"
               for f in out.snapshot.forks if f.routing_key == "groupkey")


def test_splits_and_mirrors() -> None:
    mirrors = [{"name": "shadow", "percent": 5, "endpoints": ["10.3.0.1:80"]}]
    out = compile_snapshot(
        Inputs(revision=2, services=[svc("web")],
               splits=[split("b-canary", "web", sticky={"header": "x-user"}, mirrors=mirrors),
                       split("a-first", "web", match={"pathPrefix": "/v2"}),
                       split("orphan", "ghost")])
    )
    assert [s.name for s in out.snapshot.splits] == ["a-first", "b-canary"], "name order"
    assert out.snapshot.splits[0].match.path_prefix == "/v2"
    assert out.snapshot.splits[1].sticky is not None
    assert [(m.name, m.percent) for m in out.snapshot.mirrors] == [("b-canary.shadow", 5.0)]
    assert list(out.problems) == [("splits", "orphan")]


def test_circuit_breakers_and_outlier_detection_reach_the_snapshot() -> None:
    """A service's upstream settings (camelCase on the API) go to its baseline and to every
    fork of it; a split destination carries its own."""
    web = wire.ServiceResource.model_validate({
        "metadata": {"name": "web"},
        "spec": {"endpoints": ["10.0.0.1:80"],
                 "circuitBreakers": {"maxRequests": 50, "maxRetries": 0},
                 "outlierDetection": {"consecutive5xx": 3, "maxEjectionPercent": 50}},
    })
    spec = {"service": "web",
            "destinations": [{"name": "v1", "weight": 1, "endpoints": ["10.2.0.1:80"],
                              "circuitBreakers": {"maxPendingRequests": 7}}]}
    out = compile_snapshot(Inputs(
        revision=4, services=[web], sandboxes=[sb("a", "keya", "web")],
        splits=[wire.Split.model_validate({"metadata": {"name": "s"}, "spec": spec})],
    ))
    assert out.problems == {}
    service = out.snapshot.services[0]
    assert (service.circuit_breakers.max_requests, service.circuit_breakers.max_retries) == (50, 0)
    assert service.circuit_breakers.max_connections == 1024  # Envoy's default stays
    assert service.outlier_detection is not None
    assert service.outlier_detection.consecutive_5xx == 3
    assert out.snapshot.forks[0].circuit_breakers == service.circuit_breakers
    assert out.snapshot.forks[0].outlier_detection == service.outlier_detection
    assert out.snapshot.splits[0].destinations[0].circuit_breakers.max_pending_requests == 7


@pytest.mark.parametrize("bad", [{"maxRequests": 0}, {"maxRetries": -1}, {"maxConnection": 5}])
def test_bad_circuit_breakers_are_refused_at_the_api(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        wire.ServiceSpec.model_validate({"endpoints": ["10.0.0.1:80"], "circuitBreakers": bad})


def owned(model: Any, created_by: str, tenant: str | None = None, **spec: Any) -> Any:
    """The same resource as created by `created_by` in `tenant` (None: before tenants)."""
    meta = model.metadata.model_copy(update={"created_by": created_by, "tenant": tenant})
    return model.model_copy(update={"metadata": meta,
                                    "spec": model.spec.model_copy(update=spec)})


def test_forks_carry_their_sandboxs_tenant_and_old_ones_the_default() -> None:
    out = compile_snapshot(Inputs(revision=1, services=[svc("web")], sandboxes=[
        owned(sb("a", "ka", "web"), "alice", "team-a"), owned(sb("b", "kb", "web"), "bob")]))
    assert {f.routing_key: f.tenant for f in out.snapshot.forks} == {"ka": "team-a",
                                                                      "kb": "default"}
    assert out.key_owners == {"ka": ("alice", "team-a"), "kb": ("bob", "default")}


def test_a_route_group_joins_only_its_creators_own_or_shared_sandboxes_of_its_tenant() -> None:
    pay = {"team": "pay"}
    sandboxes = [
        owned(sb("mine", "k1", "web", labels=pay), "alice", "team-a"),
        owned(sb("colleague", "k2", "api", labels=pay), "carol", "team-a"),
        owned(sb("shared", "k3", "db", labels=pay), "dave", "team-a", shared_with=["alice"]),
        # shared with "alice", but another tenant's: never joined, never counted
        owned(sb("elsewhere", "k4", "web", labels=pay), "bob", "team-b", shared_with=["alice"]),
    ]
    out = compile_snapshot(Inputs(revision=1, services=[svc("web"), svc("api"), svc("db")],
                                  sandboxes=sandboxes,
                                  routegroups=[owned(group("g", "gk", pay), "alice", "team-a")]))
    assert out.group_members["g"] == ("mine", "shared")
    assert out.not_selected == {"g": 1}
    assert ("routegroups", "g") not in out.problems
    joined = {(f.service, f.tenant) for f in out.snapshot.forks if f.routing_key == "gk"}
    assert joined == {("web", "team-a"), ("db", "team-a")}
    assert out.key_owners["gk"] == ("alice", "team-a")


def test_another_developers_route_group_does_not_reach_my_fork() -> None:
    pay = {"team": "pay"}
    out = compile_snapshot(Inputs(
        revision=1, services=[svc("web")],
        sandboxes=[owned(sb("mine", "k1", "web", labels=pay), "alice", "team-a")],
        routegroups=[owned(group("theirs", "tk", pay), "mallory", "team-a"),
                     owned(group("outside", "ok", pay), "alice", "team-b")]))
    assert [f.routing_key for f in out.snapshot.forks] == ["k1"]
    assert out.group_members == {"theirs": (), "outside": ()}
    assert out.not_selected == {"theirs": 1}  # same tenant: counted; another tenant: not


def test_health_checks_and_grpc_retries_reach_the_snapshot() -> None:
    """`healthCheck` and the gRPC words of `retryOn` (camelCase on the API) go to the baseline
    and its forks; a split destination carries its own check."""
    web = wire.ServiceResource.model_validate({
        "metadata": {"name": "web"},
        "spec": {"endpoints": ["10.0.0.1:80"],
                 "healthCheck": {"path": "/ready", "intervalSeconds": 2,
                                 "expectedStatuses": [200, 204], "unhealthyThreshold": 4},
                 "retryPolicy": {"attempts": 2, "retryOn": ["unavailable", "5xx"],
                                 "perRequestBufferLimitBytes": 1024}},
    })
    spec = {"service": "web",
            "destinations": [{"name": "v1", "weight": 1, "endpoints": ["10.2.0.1:80"],
                              "healthCheck": {"kind": "tcp"}}]}
    out = compile_snapshot(Inputs(
        revision=5, services=[web], sandboxes=[sb("a", "keya", "web")],
        splits=[wire.Split.model_validate({"metadata": {"name": "s"}, "spec": spec})],
    ))
    assert out.problems == {}
    check = out.snapshot.services[0].health_check
    assert check is not None and (check.path, check.interval_seconds) == ("/ready", 2.0)
    assert (check.expected_statuses, check.unhealthy_threshold) == ((200, 204), 4)
    assert out.snapshot.forks[0].health_check == check
    split_check = out.snapshot.splits[0].destinations[0].health_check
    assert split_check is not None and split_check.kind == "tcp"
    retry = out.snapshot.services[0].retry_policy
    assert retry.retry_on == ("unavailable", "5xx")
    assert retry.per_request_buffer_limit_bytes == 1024


@pytest.mark.parametrize("bad", [
    {}, {"path": "ready"}, {"kind": "tcp", "path": "/x"}, {"path": "/x", "intervalSeconds": 0},
    {"path": "/x", "expectedStatuses": [700]}, {"path": "/x", "healthyThreshold": 0},
    {"path": "/x", "interval": 5},
])
def test_bad_health_checks_are_refused_at_the_api(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        wire.ServiceSpec.model_validate({"endpoints": ["10.0.0.1:80"], "healthCheck": bad})


def test_an_unknown_retry_on_word_is_refused_at_the_api() -> None:
    with pytest.raises(ValueError, match="retryOn"):
        wire.ServiceSpec.model_validate({"endpoints": ["10.0.0.1:80"],
                                         "retryPolicy": {"retryOn": ["unavailible"]}})
