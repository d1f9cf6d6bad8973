"""A forged or expired routing key never reaches a fork: a real proxy with signing on, over
HTTP/1.1 and HTTP/2, with the key in every carrier (header, baggage, tracestate). Each refused
key goes to the baseline and is counted; a validly signed key reaches the fork. An edge proxy
also strips what it refused, so the next hop never sees it."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from forklane.proxy.context.signing import sign_routing_key
from tests.integration.test_http2 import H2Upstream

SECRETS = ["new-secret-0123456789", "old-secret-0123456789"]
LIVE, GONE = "a" * 32, "b" * 32
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
LATER = int(time.time()) + 3600
EARLIER = int(time.time()) - 60


def _signed(key: str, expires_at: int, secret: str = SECRETS[0], **claims: str) -> str:
    return sign_routing_key(secret, key, claims.get("sandbox", "alice"),
                            claims.get("tenant", "team-a"), expires_at)


VALID = {"new-secret": _signed(LIVE, LATER), "old-secret": _signed(LIVE, LATER, SECRETS[1])}
REFUSED = {
    "unsigned": (LIVE, "unsigned"),
    "wrong-secret": (_signed(LIVE, LATER, "not-our-secret-0123456789"), "bad-signature"),
    "other-sandbox": (_signed(LIVE, LATER, sandbox="bob"), "bad-signature"),
    "other-tenant": (_signed(LIVE, LATER, tenant="team-b"), "bad-signature"),
    "stretched-expiry": (_signed(LIVE, LATER + 86400), "bad-signature"),
    "expired": (_signed(GONE, EARLIER), "expired"),
}


def _carry(kind: str, key: str) -> dict[str, str]:
    if kind == "header":
        return {"x-forklane-routing-key": key}
    if kind == "baggage":
        return {"baggage": f"forklane-routing-key={key},team=a"}
    return {"traceparent": TRACEPARENT, "tracestate": f"forklane={key},other=1"}


def _doc(ups: dict[str, Any]) -> dict[str, Any]:
    forks = []
    for key, expires in ((LIVE, LATER), (GONE, EARLIER)):
        for svc in ("web1", "web2"):
            forks.append({"routing_key": key, "service": svc, "sandbox": "alice",
                          "tenant": "team-a", "expires_at": expires,
                          "endpoints": [ups[f"{svc}-fork"].address]})
    return {
        "version": "s1",
        "carriers": [
            {"kind": "header", "name": "x-forklane-routing-key"},
            {"kind": "baggage", "name": "forklane-routing-key"},
            {"kind": "tracestate", "name": "forklane"},
        ],
        "services": [{"name": s, "endpoints": [ups[s].address]} for s in ("web1", "web2")],
        "forks": forks,
        "signing": {"secrets": SECRETS},
    }


@pytest.fixture
async def rig(upstreams: Any, proxy_factory: Any) -> dict[str, Any]:
    ups: dict[str, Any] = {n: await upstreams(n) for n in ("web1", "web1-fork")}
    started = []
    for name in ("web2", "web2-fork"):
        up = await H2Upstream(name).start()
        started.append(up)
        ups[name] = up
    proc = proxy_factory(_doc(ups))
    edge = proxy_factory(_doc(ups), "--edge")
    yield {"ups": ups, "proc": proc, "edge": edge}
    for up in started:
        await up.aclose()


def _client(protocol: str) -> httpx.AsyncClient:
    if protocol == "http2":
        return httpx.AsyncClient(http1=False, http2=True, timeout=10)
    return httpx.AsyncClient(timeout=10)


def _seen(up: Any) -> int:
    return len(up.seen) if hasattr(up, "seen") else len(up.requests)


async def _metric(proc: Any, reason: str) -> float:
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(f"{proc.url('admin')}/metrics")).text
    for line in text.splitlines():
        if line.startswith(f'forklane_routing_keys_rejected_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize("protocol", ["http1", "http2"])
async def test_a_forged_or_expired_key_never_reaches_a_fork(rig: dict[str, Any],
                                                            protocol: str) -> None:
    svc = "web1" if protocol == "http1" else "web2"
    fork, baseline = rig["ups"][f"{svc}-fork"], rig["ups"][svc]
    proc = rig["proc"]
    async with _client(protocol) as client:
        for kind in ("header", "baggage", "tracestate"):
            for name, (key, reason) in REFUSED.items():
                before_fork, before = _seen(fork), await _metric(proc, reason)
                r = await client.get(f"{proc.url()}/x", headers={"host": svc, **_carry(kind, key)})
                assert r.status_code == 200, (kind, name, r.text)
                assert r.headers["x-upstream"] == svc, (protocol, kind, name)
                assert _seen(fork) == before_fork, (protocol, kind, name)
                assert await _metric(proc, reason) == before + 1, (kind, name, reason)
            for name, key in VALID.items():
                r = await client.get(f"{proc.url()}/x", headers={"host": svc, **_carry(kind, key)})
                assert r.headers["x-upstream"] == f"{svc}-fork", (protocol, kind, name)
    assert _seen(baseline) == 3 * len(REFUSED)


@pytest.mark.parametrize("protocol", ["http1", "http2"])
async def test_an_edge_strips_the_keys_it_refuses(rig: dict[str, Any], protocol: str) -> None:
    svc = "web1" if protocol == "http1" else "web2"
    baseline = rig["ups"][svc]
    edge = rig["edge"]
    forged = REFUSED["wrong-secret"][0]
    async with _client(protocol) as client:
        for kind in ("header", "baggage", "tracestate"):
            r = await client.get(f"{edge.url()}/x", headers={"host": svc, **_carry(kind, forged)})
            assert r.headers["x-upstream"] == svc
    for i in range(3):
        if protocol == "http1":
            fields = {k.lower(): v for k, v in baseline.requests[i].headers}
        else:
            fields = {k: v for k, v in baseline.seen[i]["headers"]}
        assert "x-forklane-routing-key" not in fields
        assert forged not in str(fields), fields
    last = (dict(baseline.seen[2]["headers"]) if protocol == "http2"
            else {k.lower(): v for k, v in baseline.requests[2].headers})
    assert last["tracestate"] == "other=1"
