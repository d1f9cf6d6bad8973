"""The two ways the proxy reads an HTTP/1.1 head give the same result.

Plain heads are read whole in one call (`http1.head`); anything unusual goes to the full
parser. These tests send the same request both ways (a field value with trailing whitespace
is enough to make the fast reader hand over) and compare what the upstream received, and
check the framing the fast reader owns: Content-Length bodies that span many reads with a
pipelined request right behind them, and responses whose body arrives after their head.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from tests.support.processes import Proc, start_proxy, write_config
from tests.support.rawhttp import parse_responses, read_until_closed
from tests.support.upstream import Behaviour, RecordingUpstream, SeenRequest

in_module_loop = pytest.mark.asyncio(loop_scope="module")
KEY = "carol-7"


@dataclass
class Rig:
    proxy: Proc
    base: RecordingUpstream
    fork: RecordingUpstream

    @property
    def port(self) -> int:
        return self.proxy.ports["outbound"]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    base = await RecordingUpstream("baseline").start()
    fork = await RecordingUpstream("fork").start()
    tmp = tmp_path_factory.mktemp("heads")
    config = write_config(tmp / "routing.yaml", {
        "version": "heads-1",
        "carriers": [
            {"kind": "header", "name": "x-forklane-routing-key"},
            {"kind": "baggage", "name": "forklane-routing-key"},
        ],
        "services": [{"name": "svc", "endpoints": [base.address]}],
        "forks": [{"routing_key": KEY, "service": "svc", "endpoints": [fork.address]}],
    })
    proxy = await asyncio.to_thread(start_proxy, config, tmp / "proxy.log",
                                    "--explain-header", "x-explain")
    try:
        yield Rig(proxy, base, fork)
    finally:
        await asyncio.to_thread(proxy.stop)
        await base.aclose()
        await fork.aclose()


async def exchange(rig: Rig, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", rig.port)
    try:
        writer.write(data)
        await writer.drain()
        return await read_until_closed(reader)
    finally:
        writer.close()


def _request(pad: bytes, *fields: bytes) -> bytes:
    lines = [b"GET /items?page=2 HTTP/1.1", b"Host: svc", b"User-Agent: t/1",
             b"X-Pad" + pad + b"v", *fields, b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n"


@in_module_loop
@pytest.mark.parametrize("fields", [
    (),
    (b"X-Forklane-Routing-Key: " + KEY.encode(),),
    (b"baggage: a=1,forklane-routing-key=" + KEY.encode(), b"Cookie: s=1"),
    (b"X-Forwarded-For: 203.0.113.7", b"X-Forwarded-Proto: https", b"Via: 1.0 edge",
     b"Keep-Alive: timeout=5", b"X-Explain: 1"),
], ids=["plain", "header-key", "baggage-key", "forwarding-fields"])
async def test_fast_and_full_path_forward_the_same_request(
    rig: Rig, fields: tuple[bytes, ...]
) -> None:
    seen: list[SeenRequest] = []
    answers = []
    for pad in (b": ", b":"):  # no space after the colon: the full parser reads it
        for up in (rig.base, rig.fork):
            up.behaviour = Behaviour()
            up.requests.clear()
        raw = await exchange(rig, _request(pad, *fields))
        (answer,) = parse_responses(raw)
        answers.append((answer.status, answer.headers))
        (request,) = rig.base.requests + rig.fork.requests
        seen.append(request)
    fast, full = seen
    assert (fast.method, fast.target, fast.headers) == (full.method, full.target, full.headers)
    assert answers[0] == answers[1]
    upstream = json.loads(parse_responses(raw)[0].body)["upstream"]
    assert upstream == ("fork" if fields and KEY.encode() in fields[0] else "baseline")


@in_module_loop
async def test_a_body_over_many_reads_then_a_pipelined_request(rig: Rig) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB: many reads on the proxy's side
    data = (b"POST /upload HTTP/1.1\r\nHost: svc\r\nContent-Length: %d\r\n\r\n" % len(body)
            + body + b"GET /after HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
    rig.base.behaviour = Behaviour()
    raw = await exchange(rig, data)
    first, second = parse_responses(raw)
    assert json.loads(first.body)["body_len"] == len(body)
    assert json.loads(second.body)["target"] == "/after"


@in_module_loop
async def test_a_response_body_that_arrives_after_its_head(rig: Rig) -> None:
    """A 300 kB answer reaches the proxy over several reads: the client gets all of it, and
    the next request on the connection is answered after it."""
    rig.base.behaviour = Behaviour(body=b"x" * 300_000)
    reader, writer = await asyncio.open_connection("127.0.0.1", rig.port)
    try:
        writer.write(b"GET /big HTTP/1.1\r\nHost: svc\r\n\r\n"
                     b"GET /next HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
        await writer.drain()
        raw = await read_until_closed(reader)
    finally:
        writer.close()
    answers = parse_responses(raw)
    assert [(a.status, a.complete, a.body == b"x" * 300_000) for a in answers] == [
        (200, True, True), (200, True, True)]
    assert [a.header("content-length") for a in answers] == ["300000", "300000"]
    assert [r.target for r in rig.base.requests[-2:]] == ["/big", "/next"]
