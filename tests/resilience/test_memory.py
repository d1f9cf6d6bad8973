"""Memory under idle load and after it: 1,000 idle keep-alive connections cost at most 16 KiB
each, all of them still answer, and once they close the proxy hands free memory back (a
garbage collection and `malloc_trim`), so it does not stay at the peak. The giving back itself
is decided by `MemoryReturn` (pure, tested with an injected release)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from forklane.proxy.memory import MemoryReturn
from tests.resilience.test_suite import report
from tests.support.polling import eventually
from tests.support.processes import Proc
from tests.support.upstream import RecordingUpstream

Upstreams = Callable[[str], Any]
ProxyFactory = Callable[..., Proc]
IDLE = 1000


def rss_kib(proxy: Proc) -> int:
    with open(f"/proc/{proxy.pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(b"GET / HTTP/1.1\r\nhost: svc\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    await asyncio.wait_for(reader.readexactly(length), 20)
    return head


async def test_idle_keep_alive_connections_are_cheap_and_memory_comes_back(
    upstreams: Upstreams, proxy_factory: ProxyFactory
) -> None:
    up: RecordingUpstream = await upstreams("up")
    proxy = proxy_factory({"version": "mem-1", "services": [
        {"name": "svc", "endpoints": [up.address], "timeouts": {"connect": 10}}]})
    port = proxy.ports["outbound"]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await get(reader, writer)  # warm: the first request's imports and caches
    writer.close()
    baseline = rss_kib(proxy)
    conns = []
    for _ in range(IDLE // 100):
        batch = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port)
                                       for _ in range(100)))
        heads = await asyncio.gather(*(get(r, w) for r, w in batch))
        assert all(h.startswith(b"HTTP/1.1 200 ") for h in heads)
        conns.extend(batch)
    peak = rss_kib(proxy)
    per_connection = (peak - baseline) / IDLE
    report("idle-memory", connections=IDLE, baseline_kib=baseline, peak_kib=peak,
           kib_per_connection=round(per_connection, 2))
    assert per_connection <= 16, f"{per_connection:.1f} KiB per idle connection"
    # Idle, not forgotten: every one of them is served again.
    heads = await asyncio.gather(*(get(r, w) for r, w in conns))
    assert all(h.startswith(b"HTTP/1.1 200 ") for h in heads)
    busy = rss_kib(proxy)
    for _, w in conns:
        w.close()
    await eventually(lambda: "free memory handed back" in proxy.output(), within=20,
                     what="the proxy handing memory back after the connections closed")
    assert rss_kib(proxy) < busy


def test_memory_return_waits_for_a_real_drop_and_is_rate_limited() -> None:
    released: list[int] = []
    memory = MemoryReturn(lambda: released.append(1), min_drop=500, interval=10.0)
    assert not memory.observe(1000, now=0.0)  # the peak grows
    assert not memory.observe(800, now=1.0)  # not half of the peak yet
    assert memory.observe(400, now=2.0) and len(released) == 1
    assert not memory.observe(1500, now=3.0)  # a new peak
    assert not memory.observe(100, now=5.0)  # due, but within the interval
    assert memory.observe(100, now=5.0, idle=True)  # about to rest: now
    assert not memory.observe(50, now=30.0)  # a drop of 50 is not worth it
    assert memory.releases == 2
