"""Helpers both store backends share: JSON and time encoding, the generation rule.

Kept free of any database library so the backends stay independent of each other.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = ["dumps", "loads", "new_uid", "next_generation", "to_utc"]


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def new_uid() -> str:
    return str(uuid.uuid4())


def to_utc(value: datetime) -> datetime:
    """Naive datetimes are taken as UTC; everything is stored in UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def next_generation(
    generation: int,
    old_labels: Mapping[str, str],
    old_spec: Mapping[str, Any],
    labels: Mapping[str, str],
    spec: Mapping[str, Any],
) -> int:
    """Generation counts changes of what the user asked for (spec, labels), not status."""
    if dict(old_labels) == dict(labels) and dumps(old_spec) == dumps(spec):
        return generation
    return generation + 1
