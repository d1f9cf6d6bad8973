"""The live tap across control-plane replicas: two real replicas on one PostgreSQL, a real
proxy connected to one of them, the viewer on the other.

The viewer's filter travels through the database (leased rows, NOTIFY) to the replica the
proxy is connected to, and what the proxy matched comes back the same way: the viewer sees
exactly the decisions the proxy logged, captures included (redacted by the proxy), and when
the viewer leaves its filter leaves the proxy too.
"""

from __future__ import annotations

import statistics
import sys

import pytest

from tests.integration.test_controlplane_e2e import (  # noqa: F401 (fixtures)
    World,
    endpoint,
    fresh_database,
    until,
    wait_acked,
    world,
)
from tests.integration.test_tap import (
    KEY,
    TapReader,
    _access_log,
    _essence,
    _Sidecar,
    installed,
    send,
)
from tests.support.processes import start_proxy

pytestmark = pytest.mark.postgres


async def test_a_viewer_on_one_replica_sees_a_proxy_on_the_other(
    world: World, fresh_database: str,  # noqa: F811
) -> None:
    a, api_a = world.controlplane(store=fresh_database)
    b, api_b = world.controlplane(store=fresh_database)
    baseline, fork = await world.upstream("baseline"), await world.upstream("fork")
    token = await api_a.proxy_token()
    await api_a.write("POST", "services", {
        "metadata": {"name": "web"}, "spec": {"endpoints": [endpoint(baseline)]}})
    version = await api_a.write("POST", "sandboxes", {"metadata": {"name": "dev"}, "spec": {
        "routingKey": KEY, "forks": [{"service": "web", "endpoints": [endpoint(fork)]}]}})
    proxy = start_proxy(
        None, world.tmp / "proxy-on-b.log", "--controlplane", b.grpc, "--service", "frontend",
        "--token", token, "--node-id", "p-on-b", "--access-log",
    )
    world.sidecars.append(_Sidecar(proxy))  # type: ignore[arg-type]
    await wait_acked(api_b, ["p-on-b"], version)
    assert "p-on-b" not in await api_a.acked(), "the proxy is connected to replica b only"
    s = world.session
    n = 20
    async with TapReader(s, a, "sandbox=dev") as viewer, \
            TapReader(s, a, "sandbox=dev&headers=true") as capturing, \
            TapReader(s, b, "sandbox=dev") as beside:  # fmt: skip
        for tap in (viewer, capturing, beside):
            await installed(s, proxy, tap.id)
        for i in range(n):
            assert await send(s, proxy, f"/x{i}", key=True) == 200
            assert await send(s, proxy, f"/n{i}", key=False) == 200
        headers = {"Host": "web", "x-forklane-routing-key": KEY,
                   "Authorization": "Bearer never-leaves-the-proxy"}
        async with s.get(f"{proxy.url()}/secret", headers=headers) as r:
            assert r.status == 200

        async def all_seen() -> bool:
            return all(len(t.requests()) >= n + 1 for t in (viewer, capturing, beside))

        await until("the lines relayed from replica b", all_seen)
        logged = [d for d in _access_log(proxy) if d["routing_key"] == KEY]
        assert len(logged) == n + 1
        assert sorted(map(_essence, viewer.requests())) == sorted(map(_essence, logged))
        assert all(d["proxy"] == "p-on-b" and "capture" not in d for d in viewer.requests())
        (secret,) = [d for d in capturing.requests() if d["target"] == "/secret"]
        sent = {k: v for k, v in secret["capture"]["request"]["headers"]}
        assert sent["Authorization"] == "[redacted]"
        assert "never-leaves-the-proxy" not in str(capturing.lines)
        assert sorted(map(_essence, beside.requests())) == sorted(map(_essence, logged))
        far, near = _delays(viewer), _delays(beside)
        sys.stderr.write(
            f"tap, proxy decision to viewer, {len(far)} lines: p50 "
            f"{statistics.median(far) * 1000:.0f} ms / max {max(far) * 1000:.0f} ms through "
            f"the other replica, p50 {statistics.median(near) * 1000:.0f} ms / max "
            f"{max(near) * 1000:.0f} ms on the proxy's own replica\n")
        first = viewer.id
    await installed(s, proxy, first, present=False)  # left replica a: gone from b's proxies


def _delays(reader: TapReader) -> list[float]:
    """Seconds from each decision (the proxy's clock) to its line's arrival here."""
    return [arrived - line["time"] for line, arrived in zip(reader.lines, reader.arrived,
                                                            strict=True)
            if line["type"] == "request"]
