"""Overload: connection caps per listener and in total, and the memory watermark, through a
real proxy process.

- a connection over `listener_max_connections` or `max_connections` is reset at accept and
  counted by reason; once one closes, the next is served;
- above `memory_watermark_mb` of resident memory a request on an open connection is answered
  503 `overloaded` and new connections are reset; the gauge says so. (The way back below the
  watermark is covered with an injected reading: a process rarely gives memory back on cue.)
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from forklane.proxy.listener.overload import Overload
from forklane.proxy.metrics import Stats
from tests.support.polling import eventually
from tests.support.processes import Proc
from tests.support.upstream import RecordingUpstream

Upstreams = Callable[[str], Any]
ProxyFactory = Callable[..., Proc]


def config(address: str, extra_services: int = 0) -> dict[str, Any]:
    services = [{"name": "svc", "endpoints": [address]}]
    services += [{"name": f"filler-{i}", "endpoints": [f"10.9.{i // 250}.{i % 250 + 1}:80"],
                  "authorities": [f"filler-{i}.example", f"filler-{i}.other"]}
                 for i in range(extra_services)]
    return {"version": f"overload-{extra_services}", "services": services}


async def metric(proxy: Proc, family: str, labels: str = "") -> float:
    # A generous timeout: loading a large table keeps the proxy busy for a few seconds.
    async with httpx.AsyncClient(base_url=proxy.url("admin"), timeout=30) as admin:
        text = (await admin.get("/metrics")).text
    pattern = re.escape(family) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + " "
    for line in text.splitlines():
        if re.match(pattern, line):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def request_on(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """One keep-alive GET on an open connection; the status line and headers."""
    writer.write(b"GET / HTTP/1.1\r\nhost: svc\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
    await asyncio.wait_for(reader.readexactly(length), 5)
    return head


async def refused(port: int) -> bool:
    """The proxy accepts at the TCP level, then resets without answering."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nhost: svc\r\n\r\n")
        data = await asyncio.wait_for(reader.read(1024), 5)
        return data == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    finally:
        writer.close()


@pytest.mark.parametrize(("flag", "reason"), [("--listener-max-connections", "listener-cap"),
                                              ("--max-connections", "total-cap")])
async def test_connections_over_a_cap_are_reset_and_counted(
    upstreams: Upstreams, proxy_factory: ProxyFactory, flag: str, reason: str
) -> None:
    up: RecordingUpstream = await upstreams("up")
    proxy = proxy_factory(config(up.address), flag, "3")
    port = proxy.ports["outbound"]
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
    for reader, writer in held:
        assert b" 200 " in await request_on(reader, writer)
    assert await refused(port)
    labels = f'listener="outbound",reason="{reason}"'
    assert await metric(proxy, "forklane_downstream_connections_refused_total", labels) == 1
    for reader, writer in held[1:]:
        assert b" 200 " in await request_on(reader, writer)  # the held ones are unaffected
    held[0][1].close()

    async def served_again() -> bool:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return b" 200 " in await request_on(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionResetError):
            return False
        finally:
            writer.close()

    await eventually(served_again, within=5, what="a freed slot serves again")
    for _, writer in held[1:]:
        writer.close()


def rss_mb(proxy: Proc) -> float:
    with open(f"/proc/{proxy.pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def test_above_the_memory_watermark_requests_get_503_and_connections_are_reset(
    upstreams: Upstreams, proxy_factory: ProxyFactory
) -> None:
    up: RecordingUpstream = await upstreams("up")
    # Find the proxy's resident size with a small table, then set the watermark above it
    # and grow the process past it with a large table (real memory, really used).
    probe = proxy_factory(config(up.address))
    baseline = rss_mb(probe)
    probe.stop()
    watermark = int(baseline) + 15
    proxy = proxy_factory(config(up.address), "--memory-watermark-mb", str(watermark))
    port = proxy.ports["outbound"]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert b" 200 " in await request_on(reader, writer)
    assert await metric(proxy, "forklane_memory_overloaded") == 0
    path: Path = proxy.config  # type: ignore[attr-defined]
    big = path.with_suffix(".tmp")  # JSON (a YAML file of this size parses for seconds)
    big.write_text(json.dumps(config(up.address, extra_services=12_000)))
    os.replace(big, path)

    async def overloaded() -> bool:
        try:
            return await metric(proxy, "forklane_memory_overloaded") == 1
        except httpx.TimeoutException:  # still busy building the table
            return False

    await eventually(overloaded, within=60, what="resident memory above the watermark")
    assert rss_mb(proxy) > watermark
    head = await request_on(reader, writer)
    assert b" 503 " in head and b"x-forklane-error: overloaded" in head
    assert await refused(port)
    assert await metric(proxy, "forklane_rejected_requests_total", 'reason="overloaded"') == 1
    assert await metric(proxy, "forklane_downstream_connections_refused_total",
                        'listener="outbound",reason="memory"') >= 1
    writer.close()


def test_the_watermark_state_follows_the_reading_both_ways() -> None:
    readings = [10, 200, 300, 50, 250]
    overload = Overload(Stats(), max_total=10, watermark=100, read_rss=lambda: readings.pop(0))
    crossed = [overload.check_memory() for _ in range(5)]
    assert crossed == [False, True, False, False, True]  # True only when it goes above
    assert overload.over_memory and overload.memory_high == 2
    off = Overload(Stats(), max_total=10, watermark=0, read_rss=lambda: 10**12)
    assert not off.check_memory() and not off.over_memory

