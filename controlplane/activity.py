"""Which routing keys proxies saw lately: the input of `ttl: {since: lastActivity}`.

Proxies report the keys of the requests they routed, every few seconds, on their snapshot
stream (`SubscribeRequest.activity`). This replica keeps the last time it heard of each key;
the reconciler turns that into the sandbox's `status.lastActivity` (a write per tenth of the
TTL at most), which is what every replica reads. Bounded: the oldest entries go first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import datetime

__all__ = ["ActivityLog"]


class ActivityLog:
    def __init__(self, clock: Callable[[], datetime], size: int = 100_000) -> None:
        self._clock = clock
        self._size = size
        self._seen: OrderedDict[str, datetime] = OrderedDict()

    def saw(self, keys: Iterable[str]) -> None:
        now = self._clock()
        seen = self._seen
        for key in keys:
            seen[key] = now
            seen.move_to_end(key)
        while len(seen) > self._size:
            seen.popitem(last=False)

    def last(self, key: str) -> datetime | None:
        return self._seen.get(key)
