"""Whose message is it: the routing rule of the data plane, applied to one message.

The rule is the inbound listener's: a message whose routing key forks the consuming service
belongs to that fork's consumer; every other message (no key, an unknown key, a conflict)
belongs to the baseline's. `decide()` answers for one consumer with a `Verdict`: take it, or
let it go to its owner (moved there, or skipped where the broker gives every side a copy).

Disagreement between consumers whose views differ for a moment (a sandbox just created or
deleted) is bounded: a message that has already been handed on `MAX_HOPS` times is taken by
whoever holds it, and the verdict says so (`reason="hop-limit"`).

Pure: values in, values out; the clock and the view are handed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from forklane.messaging.carriers import DEFAULT_CARRIERS, Carrier, KeyReading, read_routing_key

__all__ = ["BASELINE", "MAX_HOPS", "Reason", "RoutesView", "RunsAs", "Verdict", "decide"]

BASELINE = "baseline"
MAX_HOPS = 3
Reason = Literal["no-key", "conflict", "not-forked", "forked", "hop-limit", "grace"]


@dataclass(frozen=True, slots=True)
class RunsAs:
    """Which consumer this is: `service`, in `sandbox` (None: the baseline)."""

    service: str
    sandbox: str | None = None

    @property
    def side(self) -> str:
        return BASELINE if self.sandbox is None else self.sandbox


@dataclass(frozen=True, slots=True)
class RoutesView:
    """The control plane's answer for one service: routing key → sandbox whose fork takes it.

    `version` is the snapshot version it was read at ("" before any answer); `carriers` the
    carrier list the proxies read, in priority order.
    """

    service: str
    forks: Mapping[str, str] = field(default_factory=dict)
    carriers: tuple[Carrier, ...] = DEFAULT_CARRIERS
    version: str = ""

    def owner(self, key: str | None) -> str | None:
        """The sandbox whose consumer owns messages with `key` (None: the baseline)."""
        return None if key is None else self.forks.get(key)


@dataclass(frozen=True, slots=True)
class Verdict:
    """`take` or not; `owner` is the side it belongs to (None: baseline), `why` the rule."""

    take: bool
    owner: str | None
    reading: KeyReading
    reason: Reason

    @property
    def owner_side(self) -> str:
        return BASELINE if self.owner is None else self.owner


def decide(view: RoutesView, me: RunsAs, headers: Mapping[str, str], hops: int = 0) -> Verdict:
    """The verdict for message `headers` (lowercase names) at consumer `me`."""
    reading = read_routing_key(view.carriers, headers)
    owner = view.owner(reading.key)
    if owner is not None:
        reason: Reason = "forked"
    elif reading.conflict:
        reason = "conflict"
    else:
        reason = "no-key" if reading.key is None else "not-forked"
    if owner == me.sandbox:
        return Verdict(True, owner, reading, reason)
    if hops >= MAX_HOPS:
        return Verdict(True, owner, reading, "hop-limit")
    return Verdict(False, owner, reading, reason)
