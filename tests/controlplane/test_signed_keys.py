"""Signed routing keys at the control plane: the key a sandbox's owner gets is `KEY.SIGNATURE`
over the claims the snapshot carries, the snapshot carries the secrets for proxies, and the
REST view of the snapshot never shows them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ADMIN_TOKEN, Api, serve_api

from forklane.controlplane.settings import Settings
from forklane.proxy.context.signing import sign_routing_key

SECRETS = ("new-secret-0123456789", "old-secret-0123456789")


@pytest.fixture
async def signing_api(tmp_path: Path) -> AsyncIterator[Api]:
    settings = Settings(
        listen="127.0.0.1:0", store="sqlite", data_dir=tmp_path, admin_token=ADMIN_TOKEN,
        reconcile_interval=0.5, probe_timeout=0.3, replica="test",
        routing_key_secrets=SECRETS,
    )
    async with serve_api(settings) as api:
        yield api


async def _until(api: Api, path: str, check: Any, within: float = 10.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        _, body, _ = await api.call("GET", path)
        if check(body):
            return body
        assert loop.time() < deadline, f"{path}: condition not reached: {body}"
        await asyncio.sleep(0.05)


async def test_the_owner_gets_a_signed_key_and_readers_never_see_the_secrets(
    signing_api: Api,
) -> None:
    api = signing_api
    svc = {"metadata": {"name": "web"}, "spec": {"endpoints": ["127.0.0.1:9"]}}
    assert (await api.call("POST", "/api/v1/services", json_body=svc))[0] == 201
    body = {"metadata": {"name": "sb"}, "spec": {
        "forks": [{"service": "web", "endpoints": ["127.0.0.1:9"]}], "ttl": {"seconds": 600}}}
    status, made, _ = await api.call("POST", "/api/v1/sandboxes", json_body=body)
    assert status == 201, made
    bare = made["spec"]["routingKey"]

    sb = await _until(api, "/api/v1/sandboxes/sb",
                      lambda b: "." in (b.get("status") or {}).get("routingKey", ""))
    presented = sb["status"]["routingKey"]
    snap = await _until(api, "/api/v1/snapshot",
                        lambda s: any(f["routing_key"] == bare for f in s["forks"]))
    [fork] = [f for f in snap["forks"] if f["routing_key"] == bare]
    assert fork["expires_at"] is not None and fork["sandbox"] == "sb"
    assert presented == sign_routing_key(SECRETS[0], bare, "sb", fork["tenant"],
                                         fork["expires_at"])
    assert snap["signing"] == {"secrets": ["<redacted>", "<redacted>"]}
    assert all(secret not in str(snap) for secret in SECRETS)

    # the published snapshot itself (what proxies get over the push stream) has them
    latest = api.plane.publisher.latest
    assert latest is not None and latest.signing is not None
    assert latest.signing.secrets == SECRETS


def test_secrets_come_from_one_comma_separated_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORKLANE_ROUTING_KEY_SECRETS", " , ".join(SECRETS))
    assert Settings().routing_key_secrets == SECRETS
    monkeypatch.setenv("FORKLANE_ROUTING_KEY_SECRETS", "short")
    with pytest.raises(ValueError, match="16 characters"):
        Settings()
