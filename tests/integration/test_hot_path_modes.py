"""No behaviour differs between the compiled and the interpreted hot path.

Two proxies run side by side from the same installation and the same routing file, one with
`--hot-path compiled`, one with `--hot-path interpreted`, in front of the same recording
upstreams. Every case of the malformed-input corpus and every request of a routing matrix
(forks by each carrier, conflicts, splits, look-alikes, absolute-form, unknown authorities,
the inbound rules) goes to both: the answers and the requests the upstreams received must be
the same, byte for byte where the proxy wrote them.

Each proxy reports the mode it runs in on its start-up line and in `/config`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
import pytest_asyncio

from forklane.proxy import hotpath
from tests.integration.test_http1_malformed import CORPUS, SMUGGLED, Case
from tests.support.processes import Proc, start_proxy, write_config
from tests.support.rawhttp import parse_responses, send_raw
from tests.support.upstream import RecordingUpstream, SeenRequest

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(hotpath.mode() != "compiled",
                       reason="the compiled hot path is not installed or is switched off here"),
]
KEY = "alice-1"
TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@dataclass
class Rig:
    compiled: Proc
    interpreted: Proc
    ups: dict[str, RecordingUpstream]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    tmp = tmp_path_factory.mktemp("modes")
    ups = {name: await RecordingUpstream(name).start()
           for name in ("baseline", "fork", "split-a", "split-b", "app")}
    config = write_config(tmp / "routing.yaml", {
        "version": "modes-1",
        "carriers": [
            {"kind": "header", "name": "x-forklane-routing-key"},
            {"kind": "baggage", "name": "forklane-routing-key"},
            {"kind": "tracestate", "name": "forklane"},
        ],
        "services": [
            {"name": "svc", "authorities": ["svc.example:8080"],
             "endpoints": [ups["baseline"].address]},
            {"name": "cart", "endpoints": [ups["baseline"].address]},
        ],
        "forks": [{"routing_key": KEY, "service": "svc", "endpoints": [ups["fork"].address]}],
        "splits": [{"name": "canary", "service": "cart", "sticky": {"header": "x-user"},
                    "destinations": [
                        {"name": "a", "endpoints": [ups["split-a"].address], "weight": 50},
                        {"name": "b", "endpoints": [ups["split-b"].address], "weight": 50}]}],
    })
    args = ("--inbound-port", "0", "--service", "svc", "--local-app", ups["app"].address,
            "--explain-header", "x-explain", "--seed", "7")
    procs = [await asyncio.to_thread(start_proxy, config, tmp / f"{mode}.log", *args,
                                     "--hot-path", mode)
             for mode in ("compiled", "interpreted")]
    try:
        yield Rig(procs[0], procs[1], ups)
    finally:
        for proc in procs:
            await asyncio.to_thread(proc.stop)
        for up in ups.values():
            await up.aclose()


def _seen_since(rig: Rig, marks: dict[str, int]) -> dict[str, list[SeenRequest]]:
    return {name: up.requests[marks[name]:] for name, up in rig.ups.items()}


def _marks(rig: Rig) -> dict[str, int]:
    return {name: len(up.requests) for name, up in rig.ups.items()}


async def test_each_proxy_reports_its_mode(rig: Rig) -> None:
    for proc, mode in ((rig.compiled, "compiled"), (rig.interpreted, "interpreted")):
        assert f"hot path {mode}" in proc.output()
        async with httpx.AsyncClient(base_url=proc.url("admin")) as admin:
            assert (await admin.get("/config")).json()["hot_path"] == mode


@pytest.mark.parametrize("case", CORPUS, ids=[c.id for c in CORPUS])
async def test_malformed_input_gets_the_same_answer(rig: Rig, case: Case) -> None:
    answers = []
    for proc in (rig.compiled, rig.interpreted):
        data = await send_raw(proc.ports["outbound"], case.raw + SMUGGLED)
        answers.append(data)
    assert answers[0] == answers[1]
    [resp] = parse_responses(answers[0])
    assert resp.status == case.status


MATRIX: list[tuple[str, str, dict[str, str]]] = [
    ("outbound", "/plain", {"host": "svc"}),
    ("outbound", "/port-authority", {"host": "svc.example:8080"}),
    ("outbound", "/header-key", {"host": "svc", "x-forklane-routing-key": KEY}),
    ("outbound", "/baggage-key", {"host": "svc", "baggage": f"a=1,forklane-routing-key={KEY}"}),
    ("outbound", "/tracestate-key", {"host": "svc", "traceparent": TP,
                                     "tracestate": f"forklane={KEY},x=1"}),
    ("outbound", "/tracestate-no-tp", {"host": "svc", "tracestate": f"forklane={KEY}"}),
    ("outbound", "/conflict", {"host": "svc", "x-forklane-routing-key": KEY,
                               "baggage": "forklane-routing-key=bob-2"}),
    ("outbound", "/other-key", {"host": "svc", "x-forklane-routing-key": "nobody-9"}),
    ("outbound", "/invalid-key", {"host": "svc", "x-forklane-routing-key": "-bad key"}),
    ("outbound", "/lookalike", {"host": "svc", "x_forklane_routing_key": KEY}),
    ("outbound", "/sticky-1", {"host": "cart", "x-user": "u-1"}),
    ("outbound", "/sticky-2", {"host": "cart", "x-user": "u-2"}),
    ("outbound", "/sticky-3", {"host": "cart", "x-user": "u-3"}),
    ("outbound", "/explained", {"host": "svc", "x-forklane-routing-key": KEY, "x-explain": "1"}),
    ("outbound", "/forwarded", {"host": "svc", "x-forwarded-for": "192.0.2.1",
                                "x-forwarded-proto": "https", "via": "1.1 edge"}),
    ("outbound", "/nowhere", {"host": "unknown.example"}),
    ("outbound", "/repeat", {"host": "svc", "cookie": "a=1", "x-custom": "v"}),
    ("inbound", "/in-plain", {"host": "svc"}),
    ("inbound", "/in-key", {"host": "svc", "x-forklane-routing-key": KEY}),
    ("inbound", "/in-routed", {"host": "svc", "x-forklane-routing-key": KEY,
                               "x-forklane-routed": "1"}),
]


def _request(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", *[f"{k}: {v}" for k, v in headers.items()],
             "connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize(("listener", "path", "headers"), MATRIX, ids=[m[1] for m in MATRIX])
async def test_routing_matrix_gives_the_same_answers_and_upstream_requests(
    rig: Rig, listener: str, path: str, headers: dict[str, str]
) -> None:
    results = []
    for proc in (rig.compiled, rig.interpreted):
        marks = _marks(rig)
        data = await send_raw(proc.ports[listener], _request(path, headers))
        [resp] = parse_responses(data)
        seen = {name: [(r.method, r.target, r.headers) for r in requests]
                for name, requests in _seen_since(rig, marks).items() if requests}
        results.append((resp.status, resp.headers, resp.body, seen))
    assert results[0] == results[1]
    status, _, _, seen = results[0]
    where = EXPECTED.get(path, "split")
    if where is None:
        assert status == 404 and not seen
    elif where == "split":
        assert status == 200 and set(seen) <= {"split-a", "split-b"} and len(seen) == 1
    else:
        assert status == 200 and list(seen) == [where], seen


EXPECTED: dict[str, str | None] = {'/plain': 'baseline', '/port-authority': 'baseline', '/header-key': 'fork', '/baggage-key': 'fork', '/tracestate-key': 'fork', '/tracestate-no-tp': 'baseline', '/conflict': 'baseline', '/other-key': 'baseline', '/invalid-key': 'baseline', '/lookalike': 'baseline', '/explained': 'fork', '/forwarded': 'baseline', '/nowhere': None, '/repeat': 'baseline', '/in-plain': 'app', '/in-key': 'fork', '/in-routed': 'app'}
