"""A per-request ledger for resilience runs: every request a client sends ends in exactly one
column — answered (any status, with the proxy's `x-forklane-error` reason when it made the
answer itself), or reset (the connection ended without an answer, which the client sees).
`unaccounted` must stay empty: a request neither answered nor visibly reset is a lost one.

`Load` sends requests over its own keep-alive connections at a fixed rate for a bounded time
and books each one; latencies of answered requests give p99. A ledger travels between
processes as JSON (`to_json` / `from_json`): the heavy runs book their load in processes of
their own (`tests/resilience/loadgen.py`)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Ledger:
    sent: int = 0
    answered: Counter[int] = field(default_factory=Counter)  # by status
    reasons: Counter[str] = field(default_factory=Counter)  # x-forklane-error of answers
    resets: int = 0
    latencies: list[float] = field(default_factory=list)
    open_ids: set[int] = field(default_factory=set)
    answered_ids: dict[int, int] = field(default_factory=dict)  # request id -> status

    def start(self, rid: int) -> None:
        self.sent += 1
        self.open_ids.add(rid)

    def answer(self, rid: int, status: int, reason: str | None, seconds: float) -> None:
        self.open_ids.discard(rid)
        self.answered_ids[rid] = status
        self.answered[status] += 1
        if reason:
            self.reasons[reason] += 1
        self.latencies.append(seconds)

    def reset(self, rid: int) -> None:
        self.open_ids.discard(rid)
        self.resets += 1

    @property
    def unaccounted(self) -> set[int]:
        return set(self.open_ids)

    def balanced(self) -> bool:
        return self.sent == sum(self.answered.values()) + self.resets and not self.open_ids

    def p99(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[int(len(ordered) * 0.99) - 1] if ordered else 0.0

    def failed(self) -> int:
        """Answers that are not a success (5xx and 4xx) plus resets."""
        return sum(n for status, n in self.answered.items() if status >= 400) + self.resets

    def to_json(self) -> dict[str, Any]:
        return {"sent": self.sent, "answered": dict(self.answered),
                "reasons": dict(self.reasons), "resets": self.resets,
                "latencies": [round(x, 6) for x in self.latencies],
                "open_ids": sorted(self.open_ids), "answered_ids": self.answered_ids}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Ledger:
        return cls(sent=doc["sent"],
                   answered=Counter({int(k): v for k, v in doc["answered"].items()}),
                   reasons=Counter(doc["reasons"]), resets=doc["resets"],
                   latencies=list(doc["latencies"]), open_ids=set(doc["open_ids"]),
                   answered_ids={int(k): v for k, v in doc["answered_ids"].items()})


class Load:
    """`rate` requests per second for `seconds`, spread over `clients` keep-alive clients."""

    def __init__(self, base_url: str, host: str, rate: float, seconds: float,
                 clients: int = 8, path: str = "/", http2: bool = False) -> None:
        self.base_url, self.host, self.path = base_url, host, path
        self.rate, self.seconds, self.clients, self.http2 = rate, seconds, clients, http2
        self.ledger = Ledger()
        self._ids = itertools.count()

    async def _one(self, client: httpx.AsyncClient) -> None:
        rid = next(self._ids)
        self.ledger.start(rid)
        started = time.monotonic()
        try:
            answer = await client.get(self.path, headers={"host": self.host,
                                                          "x-request-id": str(rid)})
        except httpx.TransportError:
            self.ledger.reset(rid)
            return
        self.ledger.answer(rid, answer.status_code, answer.headers.get("x-forklane-error"),
                           time.monotonic() - started)

    async def run(self) -> Ledger:
        clients = [httpx.AsyncClient(base_url=self.base_url, timeout=30, http2=self.http2,
                                     http1=not self.http2) for _ in range(self.clients)]
        tasks: list[asyncio.Task[None]] = []
        try:
            interval = 1.0 / self.rate
            started = time.monotonic()
            for i in itertools.count():
                due = started + i * interval
                if due - started >= self.seconds:
                    break
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # pacing the load, not synchronisation
                tasks.append(asyncio.ensure_future(self._one(clients[i % len(clients)])))
            await asyncio.gather(*tasks)
        finally:
            for c in clients:
                await c.aclose()
        return self.ledger
