"""Per-token request budgets of the REST API: a token bucket per subject. Pure: the caller
passes the time, so tests drive it with a fake clock.

A caller over its budget gets 429 with `Retry-After`; one client's loop cannot starve the
others or fill the audit log. The table of buckets is bounded: when it is full, buckets that
have refilled completely (idle callers) are dropped first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["RateLimiter"]


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


@dataclass(slots=True)
class RateLimiter:
    """`rate` requests per second per key, bursts of up to `burst`; rate 0 turns it off."""

    rate: float
    burst: float
    max_keys: int = 10_000
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def take(self, key: str, now: float) -> float:
        """0.0 when `key` may go ahead (one token taken), else the seconds until it may."""
        if self.rate <= 0:
            return 0.0
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._forget_idle(now)
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def _forget_idle(self, now: float) -> None:
        full = [k for k, b in self._buckets.items()
                if b.tokens + (now - b.at) * self.rate >= self.burst]
        for k in full or list(self._buckets)[: max(1, self.max_keys // 10)]:
            del self._buckets[k]

    @staticmethod
    def retry_after(wait: float) -> str:
        """The `Retry-After` value (whole seconds, at least 1)."""
        return str(max(1, math.ceil(wait)))
