"""The pure fork-workload module: the fork Deployment built from a baseline (name, labels,
selectors the baseline never matches, customizations, sandbox env) and what its status says."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from forklane.controlplane import wire
from forklane.controlplane.kubernetes.workload import (
    FORK_LABEL,
    SPEC_HASH_ANNOTATION,
    WorkloadError,
    fork_deployment,
    fork_name,
    observe,
    owner_of,
    selects,
)

BASELINE: dict[str, Any] = {
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": "pricing", "namespace": "shop", "uid": "base-uid",
                 "labels": {"app": "pricing"}},
    "spec": {
        "replicas": 3,
        "selector": {"matchLabels": {"app": "pricing"}},
        "strategy": {"type": "RollingUpdate"},
        "template": {
            "metadata": {"labels": {"app": "pricing", "tier": "backend", "team": "money"},
                         "annotations": {"prometheus.io/scrape": "true"}},
            "spec": {"containers": [
                {"name": "app", "image": "pricing:v1", "args": ["--port", "8080"],
                 "env": [{"name": "LOG_LEVEL", "value": "info"}, {"name": "KEEP", "value": "1"}],
                 "ports": [{"name": "http", "containerPort": 8080}],
                 "resources": {"requests": {"cpu": "50m"}, "limits": {"memory": "256Mi"}}},
                {"name": "cache", "image": "redis:7"},
            ]},
        },
    },
}
SERVICE_SELECTOR = {"app": "pricing", "tier": "backend"}


def _fork(**custom: Any) -> wire.ForkSpec:
    doc: dict[str, Any] = {"service": "pricing.shop",
                           "forkOf": {"namespace": "shop", "name": "pricing"}}
    if custom:
        doc["customizations"] = custom
    return wire.ForkSpec.model_validate(doc)


def _build(fork: wire.ForkSpec, sandbox: str = "pr-481") -> dict[str, Any]:
    return fork_deployment(BASELINE, fork, sandbox=sandbox, sandbox_uid="uid-1",
                           routing_key="k123", generation=4,
                           service_selectors=[SERVICE_SELECTOR])


def test_name_is_deterministic_and_a_dns_label() -> None:
    assert fork_name("pricing", "pr-481") == fork_name("pricing", "pr-481")
    assert fork_name("pricing", "pr-481") != fork_name("pricing", "pr-482")
    assert fork_name("pricing", "pr-481").startswith("pricing-fl-")
    long = fork_name("a" * 60 + "-b" * 40, "sandbox-" + "x" * 50)
    assert len(long) <= 63 and long[-1].isalnum() and "-fl-" in long


def test_fork_pods_are_never_selected_by_the_baseline() -> None:
    dep = _build(_fork())
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert not selects(SERVICE_SELECTOR, pod_labels), "the baseline Service must not select it"
    assert not selects(BASELINE["spec"]["selector"]["matchLabels"], pod_labels)
    assert selects(dep["spec"]["selector"]["matchLabels"], pod_labels)
    name = dep["metadata"]["name"]
    assert dep["spec"]["selector"]["matchLabels"] == {FORK_LABEL: name}
    assert pod_labels["team"] == "money", "labels no selector uses are kept"
    assert pod_labels["app"] == name and pod_labels["tier"] == name
    assert pod_labels["forklane.io/sandbox"] == "pr-481"
    assert pod_labels["forklane.io/fork-of"] == "pricing"
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["forklane.io/inject"] == "true"
    assert annotations["forklane.io/service"] == "pricing"
    assert annotations["prometheus.io/scrape"] == "true"
    assert dep["metadata"]["namespace"] == "shop" and dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "RollingUpdate"}
    owner = owner_of(dep)
    assert owner is not None and (owner.sandbox, owner.uid, owner.service) == (
        "pr-481", "uid-1", "pricing.shop")
    assert owner_of(BASELINE) is None, "the baseline is not forklane's"


def test_customizations_apply_to_the_named_container_only() -> None:
    dep = _build(_fork(replicas=2, containers=[{
        "name": "app", "image": "pricing:pr-481", "args": ["--verbose"],
        "env": [{"name": "LOG_LEVEL", "value": "debug"},
                {"name": "TOKEN", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "t"}}}],
        "resources": {"requests": {"cpu": "200m"}},
    }]))
    app, cache = dep["spec"]["template"]["spec"]["containers"]
    assert app["image"] == "pricing:pr-481" and app["args"] == ["--verbose"]
    env = {e["name"]: e for e in app["env"]}
    assert env["LOG_LEVEL"] == {"name": "LOG_LEVEL", "value": "debug"}
    assert env["KEEP"]["value"] == "1"
    assert env["TOKEN"]["valueFrom"] == {"configMapKeyRef": {"name": "cfg", "key": "t"}}
    assert env["FORKLANE_SANDBOX"]["value"] == "pr-481"
    assert env["FORKLANE_ROUTING_KEY"]["value"] == "k123"
    assert [e["name"] for e in app["env"]][:2] == ["LOG_LEVEL", "KEEP"], "order kept"
    assert app["resources"] == {"requests": {"cpu": "200m"}, "limits": {"memory": "256Mi"}}
    assert cache["image"] == "redis:7"
    assert {e["name"] for e in cache["env"]} == {"FORKLANE_SANDBOX", "FORKLANE_ROUTING_KEY"}
    assert dep["spec"]["replicas"] == 2
    assert BASELINE["spec"]["template"]["spec"]["containers"][0]["image"] == "pricing:v1", \
        "the baseline document is not changed"


def test_unknown_container_names_the_field() -> None:
    with pytest.raises(WorkloadError) as info:
        _build(_fork(containers=[{"name": "ap", "image": "x:1"}]))
    assert str(info.value).startswith("customizations.containers[0].name: no container 'ap'")
    assert "app, cache" in str(info.value)


def test_spec_hash_follows_what_runs() -> None:
    a = _build(_fork(containers=[{"name": "app", "image": "pricing:v2"}]))
    b = _build(_fork(containers=[{"name": "app", "image": "pricing:v2"}]))
    c = _build(_fork(containers=[{"name": "app", "image": "pricing:v3"}]))
    hash_of = lambda d: d["metadata"]["annotations"][SPEC_HASH_ANNOTATION]  # noqa: E731
    assert hash_of(a) == hash_of(b) != hash_of(c)


def _pod(name: str, *, ready: bool, ip: str | None = "10.0.0.5",
         waiting: str | None = None) -> dict[str, Any]:
    state = {"waiting": {"reason": waiting, "message": f"{waiting} detail"}} if waiting else {
        "running": {}}
    return {"metadata": {"name": name},
            "status": {"phase": "Running" if ready else "Pending", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": str(ready)}],
                       "containerStatuses": [{"name": "app", "restartCount": 0,
                                              "state": state}]}}


def _deployment(available: bool, ready: int = 1) -> dict[str, Any]:
    dep = copy.deepcopy(_build(_fork()))
    dep["status"] = {"readyReplicas": ready, "conditions": [
        {"type": "Available", "status": str(available)},
        {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}]}
    return dep


def test_observe_reports_endpoints_and_pod_reasons() -> None:
    fork = _fork()
    missing = observe(None, [], fork=fork, sandbox="pr-481", generation=4, port=8080)
    assert (missing.created, missing.reason) == (False, "NotCreated")
    up = observe(_deployment(True), [_pod("p1", ready=True)], fork=fork, sandbox="pr-481",
                 generation=4, port=8080)
    assert up.available and up.endpoints == ["10.0.0.5:8080"] and up.reason == ""
    assert up.name == fork_name("pricing", "pr-481") and up.fork_of == "shop/pricing"
    stuck = observe(_deployment(False, 0), [_pod("p1", ready=False, waiting="ImagePullBackOff")],
                    fork=fork, sandbox="pr-481", generation=4, port=8080)
    assert (stuck.created, stuck.available, stuck.reason) == (True, False, "ImagePullBackOff")
    assert stuck.endpoints == [] and "pod p1" in stuck.message
    assert stuck.pods[0].reason == "ImagePullBackOff"
    crash = observe(_deployment(False, 0), [_pod("p1", ready=False, waiting="CrashLoopBackOff")],
                    fork=fork, sandbox="pr-481", generation=4, port=8080)
    assert crash.reason == "CrashLoopBackOff"
    no_pods = observe(_deployment(False, 0), [], fork=fork, sandbox="pr-481", generation=4,
                      port=8080)
    assert no_pods.reason == "ReplicaSetUpdated"
