"""The routing matrix, splits, stickiness, mirrors and reloads, through a real proxy process.

Upstreams are real loopback servers that record what reached them; the client is httpx.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from tests.support.fastclient import count_upstreams
from tests.support.polling import eventually
from tests.support.processes import write_config

pytestmark = pytest.mark.asyncio

KEY_PRICING = "alice-7f3a"
KEY_CATALOG = "bob-91c2"


async def _wait_version(admin: str, version: str) -> None:
    """Wait until the proxy's admin /config reports `version`."""
    async with httpx.AsyncClient() as client:
        async def loaded() -> bool:
            return bool((await client.get(f"{admin}/config")).json()["version"] == version)

        await eventually(loaded, what=f"proxy loading version {version}")


@pytest.fixture
async def mesh(upstreams: Any, proxy_factory: Any) -> dict[str, Any]:
    names = ["pricing", "pricing-fork", "catalog", "catalog-fork"]
    ups = {n: await upstreams(n) for n in names}
    doc = {
        "version": "m1",
        "carriers": [
            {"kind": "header", "name": "x-forklane-routing-key"},
            {"kind": "baggage", "name": "forklane-routing-key"},
            {"kind": "baggage", "name": "sd-routing-key", "emit": False},
            {"kind": "header", "name": "x-team-key", "emit": False},
        ],
        "services": [
            {"name": "pricing", "authorities": ["pricing.shop.svc:8080"],
             "endpoints": [ups["pricing"].address]},
            {"name": "catalog", "endpoints": [ups["catalog"].address]},
        ],
        "forks": [
            {"routing_key": KEY_PRICING, "service": "pricing",
             "endpoints": [ups["pricing-fork"].address], "sandbox": "alice"},
            {"routing_key": KEY_CATALOG, "service": "catalog",
             "endpoints": [ups["catalog-fork"].address], "sandbox": "bob"},
        ],
    }
    proc = proxy_factory(doc, "--explain-header", "x-forklane-explain")
    return {"ups": ups, "proc": proc, "doc": doc}


MATRIX = [
    ("no key", "pricing", {}, "pricing", None),
    ("header key forks this service", "pricing", {"x-forklane-routing-key": KEY_PRICING},
     "pricing-fork", "header:x-forklane-routing-key"),
    ("authority with port", "pricing.shop.svc:8080", {"x-forklane-routing-key": KEY_PRICING},
     "pricing-fork", "header:x-forklane-routing-key"),
    ("key of another service's fork", "pricing", {"x-forklane-routing-key": KEY_CATALOG},
     "pricing", "header:x-forklane-routing-key"),
    ("unknown key", "pricing", {"x-forklane-routing-key": "nobody-000"}, "pricing",
     "header:x-forklane-routing-key"),
    ("baggage member", "pricing",
     {"baggage": f"userId=1,forklane-routing-key={KEY_PRICING};p=1,x=y"},
     "pricing-fork", "baggage:forklane-routing-key"),
    ("compat baggage member", "catalog", {"baggage": f"sd-routing-key={KEY_CATALOG}"},
     "catalog-fork", "baggage:sd-routing-key"),
    ("custom header", "catalog", {"x-team-key": KEY_CATALOG}, "catalog-fork",
     "header:x-team-key"),
    ("conflicting carriers go to baseline", "pricing",
     {"x-forklane-routing-key": KEY_PRICING, "baggage": f"forklane-routing-key={KEY_CATALOG}"},
     "pricing", None),
    ("invalid key value is ignored", "pricing", {"x-forklane-routing-key": "bad key!"},
     "pricing", None),
]


@pytest.mark.parametrize(("case", "host", "headers", "expected", "carrier"), MATRIX,
                         ids=[m[0] for m in MATRIX])
async def test_outbound_routing_matrix(
    mesh: dict[str, Any], case: str, host: str, headers: dict[str, str], expected: str,
    carrier: str | None,
) -> None:
    proc = mesh["proc"]
    async with httpx.AsyncClient() as client:
        r = await client.get(f"{proc.url()}/items?x=1",
                             headers={"host": host, "x-forklane-explain": "1", **headers})
    assert r.status_code == 200, r.text
    assert r.headers["x-upstream"] == expected
    assert r.json()["target"] == "/items?x=1"
    route = r.headers["x-forklane-route"]
    assert f"carrier={carrier or '-'}" in route
    for name, up in mesh["ups"].items():
        assert len(up.requests) == (1 if name == expected else 0), name


async def test_the_key_reaches_the_fork_in_every_emitted_carrier(mesh: dict[str, Any]) -> None:
    proc = mesh["proc"]
    async with httpx.AsyncClient() as client:
        r = await client.get(proc.url(), headers={
            "host": "catalog", "x-team-key": KEY_CATALOG, "baggage": "a=1,b=2",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
    assert r.headers["x-upstream"] == "catalog-fork"
    seen = mesh["ups"]["catalog-fork"].requests[0]
    assert seen.header("x-forklane-routing-key") == KEY_CATALOG
    bag = seen.header("baggage")
    # ours goes first (so a size cut can never drop it); the others keep their bytes and order
    assert bag == f"forklane-routing-key={KEY_CATALOG},a=1,b=2"
    assert seen.header("x-forklane-routed") is None  # the sidecars' mark is the Via entry
    assert seen.header("via") == "1.1 forklane"
    assert seen.header("x-forwarded-for") == "127.0.0.1"


async def test_requests_without_a_key_never_reach_a_fork(mesh: dict[str, Any]) -> None:
    proc = mesh["proc"]
    async with httpx.AsyncClient() as client:
        for host in ("pricing", "catalog", "pricing.shop.svc:8080"):
            for _ in range(20):
                r = await client.get(proc.url(), headers={"host": host, "baggage": "k=v"})
                assert r.status_code == 200
    assert not mesh["ups"]["pricing-fork"].requests
    assert not mesh["ups"]["catalog-fork"].requests


async def test_absolute_form_target_names_the_service(mesh: dict[str, Any]) -> None:
    """An app using the sidecar as HTTP_PROXY sends absolute-form targets."""
    proc = mesh["proc"]
    async with httpx.AsyncClient(proxy=proc.url()) as client:
        r = await client.get("http://pricing/a/b?c=d",
                             headers={"x-forklane-routing-key": KEY_PRICING})
    assert r.headers["x-upstream"] == "pricing-fork"
    assert r.json()["target"] == "/a/b?c=d"


async def test_inbound_listener(upstreams: Any, proxy_factory: Any) -> None:
    app = await upstreams("local-app")
    fork = await upstreams("pricing-fork")
    other = await upstreams("catalog")
    doc = {
        "version": "i1",
        "services": [{"name": "pricing", "endpoints": ["127.0.0.1:1"]},
                     {"name": "catalog", "endpoints": [other.address]}],
        "forks": [{"routing_key": KEY_PRICING, "service": "pricing",
                   "endpoints": [fork.address]},
                  {"routing_key": KEY_CATALOG, "service": "catalog",
                   "endpoints": [other.address]}],
    }
    proc = proxy_factory(doc, "--service", "pricing", "--local-app", app.address, inbound=True)
    url = proc.url("inbound")
    async with httpx.AsyncClient() as client:
        plain = await client.get(url, headers={"host": "pricing"})
        forked = await client.get(url, headers={"x-forklane-routing-key": KEY_PRICING})
        other_key = await client.get(url, headers={"x-forklane-routing-key": KEY_CATALOG})
        already = await client.get(url, headers={"x-forklane-routing-key": KEY_PRICING,
                                                 "via": "1.1 forklane"})
        older = await client.get(url, headers={"x-forklane-routing-key": KEY_PRICING,
                                               "x-forklane-routed": "1"})
        through_other = await client.get(url, headers={"x-forklane-routing-key": KEY_PRICING,
                                                       "via": "1.1 forklane, 1.1 nginx"})
    assert plain.headers["x-upstream"] == "local-app"
    assert forked.headers["x-upstream"] == "pricing-fork"
    assert other_key.headers["x-upstream"] == "local-app"
    # A sidecar upstream already decided this hop (its Via entry): deliver locally, never loop;
    # an older sidecar's x-forklane-routed header counts the same.
    assert already.headers["x-upstream"] == "local-app"
    assert older.headers["x-upstream"] == "local-app"
    # another proxy came last: this sidecar is the safety net again
    assert through_other.headers["x-upstream"] == "pricing-fork"
    # No forklane mark reaches any app, whichever address an endpoint names.
    assert all(r.header("x-forklane-routed") is None for r in app.requests)
    assert all(r.header("x-forklane-routed") is None for r in fork.requests)


def _split_doc(stable: str, canary: str, weights: tuple[int, int], version: str,
               sticky: bool) -> dict[str, Any]:
    split: dict[str, Any] = {
        "name": "canary", "service": "web",
        "destinations": [
            {"name": "stable", "weight": weights[0], "endpoints": [stable]},
            {"name": "canary", "weight": weights[1], "endpoints": [canary]},
        ],
    }
    if sticky:
        split["sticky"] = {"header": "x-user"}
    return {"version": version, "services": [{"name": "web", "endpoints": [stable]}],
            "splits": [split]}


@pytest.mark.slow
async def test_split_shares_over_ten_thousand_requests(upstreams: Any, proxy_factory: Any) -> None:
    stable, canary = await upstreams("stable"), await upstreams("canary")
    proc = proxy_factory(_split_doc(stable.address, canary.address, (80, 20), "s1", False))
    seen = await count_upstreams(proc.ports["outbound"], 10_000, lambda i: {"host": "web"})
    share = 100 * seen["canary"] / 10_000
    assert abs(share - 20) <= 1.5, seen


async def test_sticky_users_stay_and_weight_changes_move_few(upstreams: Any,
                                                             proxy_factory: Any) -> None:
    stable, canary = await upstreams("stable"), await upstreams("canary")
    doc = _split_doc(stable.address, canary.address, (90, 10), "w1", True)
    proc = proxy_factory(doc)
    users = [f"user-{i}" for i in range(2000)]

    async def assignments() -> dict[str, str]:
        out: dict[str, str] = {}
        for u in users:
            seen = await count_upstreams(proc.ports["outbound"], 1,
                                         lambda i, u=u: {"host": "web", "x-user": u},
                                         connections=1)
            (out[u],) = seen
        return out

    before = await assignments()
    again = await assignments()
    assert before == again  # sticky across requests
    assert abs(100 * Counter(before.values())["canary"] / len(users) - 10) <= 2.5
    write_config(proc.config, _split_doc(stable.address, canary.address, (80, 20), "w2", True))
    await _wait_version(proc.url("admin"), "w2")
    after = await assignments()
    moved = [u for u in users if before[u] != after[u]]
    assert all(before[u] == "stable" and after[u] == "canary" for u in moved)
    assert abs(100 * len(moved) / len(users) - 10) <= 2.5, len(moved)


async def test_mirror_gets_a_copy_and_never_slows_or_fails_the_caller(
    upstreams: Any, proxy_factory: Any
) -> None:
    main, shadow, slow = await upstreams("main"), await upstreams("shadow"), await upstreams("slow")
    slow.behaviour.delay = 3.0
    slow.behaviour.status = 500
    doc = {
        "version": "mi1",
        "services": [{"name": "a", "endpoints": [main.address]},
                     {"name": "b", "endpoints": [main.address]},
                     {"name": "c", "endpoints": [main.address]}],
        "mirrors": [
            {"name": "copy", "service": "a", "percent": 100, "endpoints": [shadow.address]},
            {"name": "slow", "service": "b", "percent": 100, "endpoints": [slow.address]},
            {"name": "dead", "service": "c", "percent": 100, "endpoints": ["127.0.0.1:1"]},
        ],
    }
    proc = proxy_factory(doc)
    async with httpx.AsyncClient() as client:
        r = await client.post(proc.url() + "/orders", headers={"host": "a"}, content=b"x" * 5000)
        assert r.status_code == 200 and r.headers["x-upstream"] == "main"
        for host in ("b", "c"):
            started = time.monotonic()
            for _ in range(5):
                r = await client.post(proc.url(), headers={"host": host}, content=b"payload")
                assert r.status_code == 200 and r.headers["x-upstream"] == "main"
            assert time.monotonic() - started < 1.0  # the slow mirror takes 3 s per answer
    await eventually(lambda: bool(shadow.requests), within=5, what="the mirror's copy")
    copy = shadow.requests[0]
    assert copy.method == "POST" and copy.target == "/orders" and len(copy.body) == 5000
    assert copy.header("x-forklane-mirror") == "1"
    # Mirror traffic is its own destination kind in the request metrics.
    async with httpx.AsyncClient() as client:
        async def counted() -> bool:
            text = (await client.get(proc.url("admin") + "/metrics")).text
            return ('kind="mirror",listener="outbound",service="a",status_class="2xx"} 1.0'
                    in text and
                    'kind="mirror",listener="outbound",service="c",status_class="reset"} 5.0'
                    in text)

        await eventually(counted, what="mirror rows in /metrics")


@pytest.mark.slow
async def test_reload_under_load_fails_no_request(upstreams: Any, proxy_factory: Any) -> None:
    stable, canary = await upstreams("stable"), await upstreams("canary")
    proc = proxy_factory(_split_doc(stable.address, canary.address, (50, 50), "r0", False))
    stop = asyncio.Event()
    failures: list[str] = []
    done = 0

    async def hammer() -> None:
        nonlocal done
        async with httpx.AsyncClient() as client:
            while not stop.is_set():
                r = await client.get(proc.url(), headers={"host": "web"})
                if r.status_code != 200:
                    failures.append(r.text)
                done += 1

    workers = [asyncio.create_task(hammer()) for _ in range(8)]
    try:
        for i in range(1, 6):
            weights = (100 - 20 * i, 20 * i) if i < 5 else (0, 100)
            write_config(proc.config,
                         _split_doc(stable.address, canary.address, weights, f"r{i}", False))
            await _wait_version(proc.url("admin"), f"r{i}")
    finally:
        stop.set()
        await asyncio.gather(*workers)
    assert not failures
    assert done > 100
    # the last table sends everything to canary
    async with httpx.AsyncClient() as client:
        r = await client.get(proc.url(), headers={"host": "web"})
    assert r.headers["x-upstream"] == "canary"


async def test_invalid_config_is_rejected_and_the_old_table_keeps_serving(
    upstreams: Any, proxy_factory: Any
) -> None:
    up = await upstreams("web")
    doc = {"version": "good", "services": [{"name": "web", "endpoints": [up.address]}]}
    proc = proxy_factory(doc)
    bad = {"version": "bad", "services": [{"name": "web", "endpoints": ["nope"]}]}
    write_config(proc.config, bad)
    admin = proc.url("admin")
    async with httpx.AsyncClient() as client:
        async def rejected() -> bool:
            return bool((await client.get(f"{admin}/config")).json()["last_error"])

        await eventually(rejected, what="the reload to be rejected")
        cfg = (await client.get(f"{admin}/config")).json()
        assert cfg["version"] == "good"
        assert "services.0.endpoints" in cfg["last_error"]
        r = await client.get(proc.url(), headers={"host": "web"})
        assert r.status_code == 200
        metrics = (await client.get(f"{admin}/metrics")).text
    assert "forklane_config_reload_failures_total 1.0" in metrics
    assert 'forklane_config_version{version="good"} 1.0' in metrics


async def test_sighup_reloads(upstreams: Any, proxy_factory: Any) -> None:
    import os
    import signal

    a, b = await upstreams("a"), await upstreams("b")
    proc = proxy_factory({"version": "h1", "services": [{"name": "web", "endpoints": [a.address]}]})
    # Write without changing mtime-visible size? The watcher would see it too; SIGHUP is immediate.
    write_config(proc.config, {"version": "h2", "services": [{"name": "web",
                                                              "endpoints": [b.address]}]})
    os.kill(proc.pid, signal.SIGHUP)
    await _wait_version(proc.url("admin"), "h2")
    async with httpx.AsyncClient() as client:
        r = await client.get(proc.url(), headers={"host": "web"})
    assert r.headers["x-upstream"] == "b"


async def test_admin_explain_and_tap(mesh: dict[str, Any]) -> None:
    proc = mesh["proc"]
    admin = proc.url("admin")
    async with httpx.AsyncClient() as client:
        r = await client.post(f"{admin}/explain", json={
            "host": "pricing", "headers": {"baggage": f"forklane-routing-key={KEY_PRICING}"}})
        body = r.json()
        assert body["kind"] == "fork" and body["rule"] == "forks[0]"
        assert body["carrier"] == "baggage:forklane-routing-key"
        bad = await client.post(f"{admin}/explain", content=b"{nope")
        assert bad.status_code == 400
        assert (await client.get(f"{admin}/readyz")).status_code == 200

        async def tap() -> list[dict[str, Any]]:
            lines = []
            async with client.stream("GET", f"{admin}/tap?seconds=3") as resp:
                async for line in resp.aiter_lines():
                    if line:
                        lines.append(json.loads(line))
                        break
            return lines

        task = asyncio.create_task(tap())
        deadline = time.monotonic() + 5
        while not task.done() and time.monotonic() < deadline:
            await client.get(proc.url(), headers={"host": "catalog"})
            await asyncio.sleep(0.05)
        records = await task
    assert records and records[0]["kind"] == "baseline" and records[0]["status"] == 200


WIRE_CASES = [
    # the key in the first of two baggage fields: joined, as the proxy joins them
    [("baggage", f"forklane-routing-key={KEY_PRICING}"), ("baggage", "other=1")],
    [("baggage", "other=1"), ("baggage", f"forklane-routing-key={KEY_PRICING}")],
    # two keys in two fields of one carrier disagree: no key
    [("baggage", f"forklane-routing-key={KEY_PRICING}"),
     ("baggage", f"forklane-routing-key={KEY_CATALOG}")],
    # a look-alike spelled with underscores never routes
    [("x_forklane_routing_key", KEY_PRICING)],
    [("X-Forklane-Routing-Key", KEY_PRICING), ("baggage", "a=1")],
]


@pytest.mark.parametrize("fields", WIRE_CASES)
async def test_explain_answers_what_the_proxy_does_with_the_same_fields(
    mesh: dict[str, Any], fields: list[tuple[str, str]]
) -> None:
    proc = mesh["proc"]
    async with httpx.AsyncClient() as client:
        explained = (await client.post(f"{proc.url('admin')}/explain", json={
            "host": "pricing", "headers": [list(f) for f in fields]})).json()
        query = "&".join(f"header={n}:{v}" for n, v in fields)
        via_get = (await client.get(f"{proc.url('admin')}/explain?host=pricing&{query}")).json()
        real = await client.get(proc.url(), headers=httpx.Headers([("host", "pricing"), *fields]))
    expected = "pricing-fork" if explained["kind"] == "fork" else "pricing"
    assert real.headers["x-upstream"] == expected, (fields, explained)
    assert via_get["kind"] == explained["kind"]
    if fields[0][0] == "baggage" and "other" in fields[1][1]:
        assert explained["kind"] == "fork"  # collapsing the two fields would lose the key


async def test_access_log_is_one_json_line_per_request(upstreams: Any, proxy_factory: Any) -> None:
    web, fork = await upstreams("web"), await upstreams("web-fork")
    doc = {"version": "log1", "services": [{"name": "web", "endpoints": [web.address]}],
           "forks": [{"routing_key": KEY_PRICING, "service": "web",
                      "endpoints": [fork.address]}]}
    proc = proxy_factory(doc, "--access-log")
    async with httpx.AsyncClient() as client:
        web.behaviour.delay = 0.2  # the first answer takes a while: its duration must say so
        await client.get(f"{proc.url()}/a?b=1", headers={"host": "web"})
        web.behaviour.delay = 0.0
        await client.get(f"{proc.url()}/c", headers={"host": "web",
                                                     "x-forklane-routing-key": KEY_PRICING})
        await client.get(proc.url(), headers={"host": "nowhere"})

    def records() -> list[dict[str, Any]]:
        return [json.loads(line) for line in proc.output().splitlines()
                if line.startswith("{")]

    await eventually(lambda: len(records()) == 3, what="three access-log lines")
    first, second, third = records()
    assert (first["target"], first["status"], first["kind"]) == ("/a?b=1", 200, "baseline")
    assert first["endpoint"] == web.address and first["protocol"] == "http/1.1"
    assert (second["kind"], second["routing_key"], second["carrier"]) == (
        "fork", KEY_PRICING, "header:x-forklane-routing-key")
    assert (third["status"], third["kind"], third["destination"]) == (404, "reject", None)
    # Duration covers the upstream's time, and a local answer does not wait for anyone.
    assert first["duration_ms"] >= 200
    assert third["duration_ms"] < first["duration_ms"]
