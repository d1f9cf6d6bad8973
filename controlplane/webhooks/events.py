"""Which sandbox event a store change is, and how a delivery is signed and retried. Pure.

Events: `sandbox.created` (ADDED), `sandbox.ready` / `sandbox.failed` (the status phase
became Ready / Failed), `sandbox.expired` (deleted at or after its `status.expiresAt`, which
is what the reconciler does) and `sandbox.deleted` (any other deletion).

A delivery's id is `<revision>-<event>`: the same on every replica and every retry, so a
receiver can drop duplicates. The signature is Stripe-style, `X-Forklane-Signature:
t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, so a receiver checks both the
body and its age (replays).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = [
    "EVENTS",
    "Event",
    "backoff",
    "event_of",
    "sign",
    "verify",
]

EVENTS = ("created", "ready", "failed", "expired", "deleted")


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    type: str  # sandbox.created | …
    name: str
    body: bytes


def _phase(status: Mapping[str, Any] | None) -> str | None:
    phase = (status or {}).get("phase")
    return phase if isinstance(phase, str) else None


def event_of(
    change_type: str,
    revision: int,
    name: str,
    status: Mapping[str, Any] | None,
    previous_phase: str | None,
    document: dict[str, Any],
    now: datetime,
) -> Event | None:
    """The event a change to sandbox `name` is (None: not one of ours)."""
    kind: str | None = None
    if change_type == "ADDED":
        kind = "created"
    elif change_type == "DELETED":
        expires = (status or {}).get("expiresAt")
        try:
            expired = isinstance(expires, str) and datetime.fromisoformat(expires) <= now
        except ValueError:
            expired = False
        kind = "expired" if expired else "deleted"
    else:
        phase = _phase(status)
        if phase != previous_phase and phase in ("Ready", "Failed"):
            kind = phase.lower()
    if kind is None:
        return None
    event_id = f"{revision}-{kind}"
    payload = {"id": event_id, "type": f"sandbox.{kind}", "time": now.isoformat(),
               "sandbox": name, "object": document}
    return Event(event_id, f"sandbox.{kind}", name,
                 json.dumps(payload, separators=(",", ":")).encode())


def sign(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, body: bytes, header: str, now: int, tolerance: int = 300) -> bool:
    """What a receiver does (used by the tests and shown in the README)."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, body, timestamp), header)


def backoff(attempt: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Seconds before retry number `attempt` (1, 2, …): doubling from `base`, capped."""
    return min(cap, base * 2.0 ** max(0, attempt - 1))
