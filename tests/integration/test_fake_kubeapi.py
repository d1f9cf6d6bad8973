"""The fake API server against real clients: kubernetes-asyncio for lists, watches (resume,
bookmarks, 410 after compaction), errors and patches; the real kubectl for get, apply and
delete (schema validation off: the fake serves no OpenAPI document). If the fake drifted from what real clients expect, these would fail."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client, config

from tests.support.kubeapi import FakeKube
from tests.support.kubetools import tool


@pytest.fixture
async def fake() -> AsyncIterator[FakeKube]:
    async with FakeKube(bookmark_interval=0.2) as kube:
        kube.create("Namespace", {"metadata": {"name": "shop"}})
        yield kube


@pytest.fixture
async def api(fake: FakeKube, tmp_path: Path) -> AsyncIterator[client.ApiClient]:
    conf = client.Configuration()
    await config.load_kube_config(config_file=str(fake.kubeconfig(tmp_path / "kc")),
                                  client_configuration=conf)
    async with client.ApiClient(conf) as api_client:
        yield api_client


def _service(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"ports": [{"port": 80, "targetPort": 8080}]}}


async def test_crud_and_status_errors_with_kubernetes_asyncio(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    made = await core.create_namespaced_service("shop", _service("pricing"))
    assert made.metadata.uid and made.metadata.resource_version
    got = await core.read_namespaced_service("pricing", "shop")
    assert got.spec.ports[0].target_port == 8080
    page = await core.list_service_for_all_namespaces()
    assert [s.metadata.name for s in page.items] == ["pricing"]
    assert int(page.metadata.resource_version) >= int(made.metadata.resource_version)

    with pytest.raises(client.ApiException) as info:
        await core.create_namespaced_service("shop", _service("pricing"))
    assert info.value.status == 409
    body = json.loads(info.value.body)
    assert (body["kind"], body["status"], body["reason"]) == ("Status", "Failure", "AlreadyExists")

    with pytest.raises(client.ApiException) as info:
        await core.read_namespaced_service("nope", "shop")
    assert info.value.status == 404 and json.loads(info.value.body)["details"]["name"] == "nope"

    stale = got.to_dict()
    await core.patch_namespaced_service("pricing", "shop", {"metadata": {"labels": {"a": "b"}}})
    stale_body = client.V1Service(metadata=client.V1ObjectMeta(
        name="pricing", resource_version=stale["metadata"]["resource_version"]),
        spec=got.spec)
    with pytest.raises(client.ApiException) as info:
        await core.replace_namespaced_service("pricing", "shop", stale_body)
    assert info.value.status == 409 and json.loads(info.value.body)["reason"] == "Conflict"

    await core.delete_namespaced_service("pricing", "shop")
    assert (await core.list_namespaced_service("shop")).items == []


async def _lines(resp: Any, count: int) -> list[dict[str, Any]]:
    out = []
    async with asyncio.timeout(10):
        while len(out) < count:
            line = await resp.content.readline()
            assert line, "watch ended early"
            out.append(json.loads(line))
    return out


async def test_watch_resumes_sends_bookmarks_and_expires(fake: FakeKube,
                                                         api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    await core.create_namespaced_service("shop", _service("a"))
    listed = await core.list_namespaced_service("shop")
    rv = listed.metadata.resource_version
    await core.create_namespaced_service("shop", _service("b"))
    await core.delete_namespaced_service("a", "shop")

    resp = await core.list_namespaced_service("shop", watch=True, resource_version=rv,
                                              allow_watch_bookmarks=True, _preload_content=False)
    events = await _lines(resp, 3)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events[:2]] == [
        ("ADDED", "b"), ("DELETED", "a")]
    assert events[2]["type"] == "BOOKMARK"
    assert int(events[2]["object"]["metadata"]["resourceVersion"]) > int(rv)
    resp.close()

    fake.compact()
    resp = await core.list_namespaced_service("shop", watch=True, resource_version=rv,
                                              _preload_content=False)
    (event,) = await _lines(resp, 1)
    assert event["type"] == "ERROR"
    assert (event["object"]["code"], event["object"]["reason"]) == (410, "Expired")
    resp.close()


async def test_endpointslices_and_token_reviews(fake: FakeKube, api: client.ApiClient) -> None:
    from tests.support.kubeapi import TokenIdentity

    slices = client.DiscoveryV1Api(api)
    body = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "pricing-x1", "labels": {"kubernetes.io/service-name": "pricing"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.1.0.5"], "conditions": {"ready": True}}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}
    await slices.create_namespaced_endpoint_slice("shop", body)
    found = await slices.list_namespaced_endpoint_slice(
        "shop", label_selector="kubernetes.io/service-name=pricing")
    assert found.items[0].endpoints[0].conditions.ready is True

    fake.tokens["tok"] = TokenIdentity("system:serviceaccount:shop:pricing", ("forklane",))
    auth = client.AuthenticationV1Api(api)
    review = await auth.create_token_review(
        client.V1TokenReview(spec=client.V1TokenReviewSpec(token="tok", audiences=["forklane"])))
    assert review.status.authenticated and review.status.audiences == ["forklane"]
    assert review.status.user.username == "system:serviceaccount:shop:pricing"
    wrong = await auth.create_token_review(
        client.V1TokenReview(spec=client.V1TokenReviewSpec(token="tok", audiences=["other"])))
    assert not wrong.status.authenticated and "audiences" in wrong.status.error


def _kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run([tool("kubectl"), "--kubeconfig", str(kubeconfig),
                           "--cache-dir", str(kubeconfig.parent / "kube-cache"), *args],
                          input=stdin, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


MANIFEST = """
apiVersion: v1
kind: Service
metadata:
  name: pricing
  namespace: shop
  labels: {app: pricing}
spec:
  selector: {app: pricing}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: shop}
data: {mode: "one"}
"""


async def test_kubectl_get_apply_delete(fake: FakeKube, tmp_path: Path) -> None:
    kc = fake.kubeconfig(tmp_path / "kc")

    def flow() -> None:
        # The fake serves no OpenAPI document, so kubectl's client-side schema validation is
        # off; schemas are checked where they matter (the chart test, kubernetes-validate).
        out = _kubectl(kc, "apply", "--validate=false", "-f", "-", stdin=MANIFEST)
        assert "service/pricing created" in out and "configmap/settings created" in out
        again = _kubectl(kc, "apply", "--validate=false", "-f", "-",
                         stdin=MANIFEST.replace('"one"', '"two"'))
        assert "service/pricing unchanged" in again and "configmap/settings configured" in again
        got = json.loads(_kubectl(kc, "get", "configmap", "settings", "-n", "shop", "-o", "json"))
        assert got["data"] == {"mode": "two"}
        table = _kubectl(kc, "get", "svc", "-n", "shop")
        assert "pricing" in table
        names = _kubectl(kc, "get", "services", "-A", "-o", "name")
        assert names.split() == ["service/pricing"]
        assert "deleted" in _kubectl(kc, "delete", "-f", "-", stdin=MANIFEST)
        done = subprocess.run([tool("kubectl"), "--kubeconfig", str(kc), "get", "svc",
                               "pricing", "-n", "shop"], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 1 and 'services "pricing" not found' in done.stderr

    await asyncio.to_thread(flow)
