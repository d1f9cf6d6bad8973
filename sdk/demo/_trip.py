"""What one demo request went through, read from the frontend's answer; pure functions.

The sample services answer `{"hops": [{"service", "version"}, ...], "price": float}`, each
hop added by the service that handled it. `check_trip` is the demo's own assertion: a
request with the key must reach the fork, and a request without it must not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from rich.text import Text

__all__ = ["Hop", "Trip", "check_trip", "parse_trip", "trip_line"]

_LABEL_WIDTH = 24


@dataclass(frozen=True, slots=True)
class Hop:
    service: str
    version: str


@dataclass(frozen=True, slots=True)
class Trip:
    hops: tuple[Hop, ...]
    price: float
    note: str = ""


def parse_trip(body: bytes) -> Trip:
    """The trip in a frontend answer; `ValueError` naming what is wrong with it."""
    try:
        doc = json.loads(body)
        hops = tuple(Hop(str(h["service"]), str(h["version"])) for h in doc["hops"])
        price = float(doc["price"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not a demo answer ({type(exc).__name__}: {exc})") from None
    if not hops:
        raise ValueError("not a demo answer (no hops)")
    return Trip(hops, price, str(doc.get("note", "")))


def check_trip(trip: Trip, *, keyed: bool, fork: Hop, chain: tuple[str, ...]) -> str | None:
    """None when the trip is what routing promises, else the reason it is not."""
    services = tuple(h.service for h in trip.hops)
    if services != chain:
        return f"went {' → '.join(services)}, expected {' → '.join(chain)}"
    for hop in trip.hops:
        forked = hop == fork
        if keyed and hop.service == fork.service and not forked:
            return f"carried the key but {hop.service} {hop.version} answered, not the fork"
        if not keyed and forked:
            return f"carried no key but reached the fork ({hop.service} {hop.version})"
        if hop.service != fork.service and hop.version != "v1":
            return f"{hop.service} {hop.version} answered; only {fork.service} is forked"
    return None


def trip_line(label: str, trip: Trip, fork: Hop) -> Text:
    """`request 2 (key 3f9c…)   frontend v1 → catalog v1 → pricing v2   price  80.00  ← ...`"""
    line = Text()  # styles per span: a Text's own style would cover every appended part
    line.append(f"{label:<{_LABEL_WIDTH}}", style="bold")
    for i, hop in enumerate(trip.hops):
        if i:
            line.append(" → ", style="dim")
        line.append(f"{hop.service} {hop.version}", style="bold magenta" if hop == fork else "")
    line.append(f"   price {trip.price:6.2f}")
    if fork in trip.hops:
        line.append("  ← your fork", style="bold magenta")
        if trip.note:
            line.append(f" ({trip.note})", style="magenta")
    return line
