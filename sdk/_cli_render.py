"""How the CLI shows resources: tables for people, JSON and YAML for scripts.

Pure functions from wire models to rows or documents; the only I/O is `emit`, which writes
to a given rich `Console` or text stream. Tables use rich so they fit the terminal width
(long cells fold; names and routing keys never wrap, so they stay copyable).

Invariants: `-o json` and `-o yaml` print exactly the API's JSON form (camelCase, no nulls),
a single object for `get`, and `{"kind": "...List", "items": [...]}` for lists.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

import yaml
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from forklane.config import ConfigFile
from forklane.controlplane.wire import API_VERSION, Sandbox, Split, dump

__all__ = [
    "CONTEXT_COLUMNS",
    "PROXY_COLUMNS",
    "ROUTEGROUP_COLUMNS",
    "SANDBOX_COLUMNS",
    "SERVICE_COLUMNS",
    "SPLIT_COLUMNS",
    "Column",
    "Format",
    "emit",
    "emit_document",
    "explanation_text",
    "humanize_seconds",
    "list_document",
]


class Format(enum.StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


@dataclass(frozen=True, slots=True)
class Column:
    header: str
    cell: Callable[[Any], str]
    wrap: bool = True


def humanize_seconds(seconds: float) -> str:
    """`45s`, `12m`, `3h5m`, `2d4h`: two units at most, like kubectl's AGE column."""
    s = int(abs(seconds))
    sign = "-" if seconds < 0 else ""
    if s < 60:
        return f"{sign}{s}s"
    if s < 3600:
        return f"{sign}{s // 60}m"
    if s < 86400:
        h, m = divmod(s // 60, 60)
        return f"{sign}{h}h{m}m" if m else f"{sign}{h}h"
    d, h = divmod(s // 3600, 24)
    return f"{sign}{d}d{h}h" if h else f"{sign}{d}d"


def _since(ts: datetime | None, now: datetime | None = None) -> str:
    if ts is None:
        return "-"
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return humanize_seconds(((now or datetime.now(UTC)) - ts).total_seconds())


def _until(ts: datetime | None) -> str:
    if ts is None:
        return "never"
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    left = (ts - datetime.now(UTC)).total_seconds()
    return f"in {humanize_seconds(left)}" if left >= 0 else "expired"


def _labels(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def _sandbox_key(sb: Sandbox) -> str:
    return (sb.status.routing_key if sb.status else None) or sb.spec.routing_key or "-"


SANDBOX_COLUMNS: tuple[Column, ...] = (
    Column("NAME", lambda sb: sb.metadata.name, wrap=False),
    Column("PHASE", lambda sb: sb.status.phase if sb.status else "-"),
    Column("ROUTING KEY", _sandbox_key, wrap=False),
    Column(
        "FORKS",
        lambda sb: " ".join(f"{f.service}={','.join(f.endpoints)}" for f in sb.spec.forks),
    ),
    Column("EXPIRES", lambda sb: _until(sb.status.expires_at if sb.status else None)),
    Column("AGE", lambda sb: _since(sb.metadata.creation_timestamp)),
)

ROUTEGROUP_COLUMNS: tuple[Column, ...] = (
    Column("NAME", lambda rg: rg.metadata.name, wrap=False),
    Column("PHASE", lambda rg: rg.status.phase if rg.status else "-"),
    Column(
        "ROUTING KEY",
        lambda rg: (rg.status.routing_key if rg.status else None) or rg.spec.routing_key or "-",
        wrap=False,
    ),
    Column("SELECTOR", lambda rg: _labels(rg.spec.selector)),
    Column("SANDBOXES", lambda rg: ",".join(rg.status.sandboxes) if rg.status else "-"),
    Column("AGE", lambda rg: _since(rg.metadata.creation_timestamp)),
)


def _sticky(split: Split) -> str:
    s = split.spec.sticky
    if s is None:
        return "-"
    parts = ([f"header:{s.header}"] if s.header else []) + (
        [f"cookie:{s.cookie}"] if s.cookie else []
    )
    return ",".join(parts) or "-"


SPLIT_COLUMNS: tuple[Column, ...] = (
    Column("NAME", lambda sp: sp.metadata.name, wrap=False),
    Column("SERVICE", lambda sp: sp.spec.service),
    Column("PHASE", lambda sp: sp.status.phase if sp.status else "-"),
    Column(
        "DESTINATIONS",
        lambda sp: (
            " ".join(f"{d.name}={','.join(d.endpoints)}:{d.weight}" for d in sp.spec.destinations)
            or "-"
        ),
    ),
    Column("STICKY", _sticky),
    Column(
        "MIRRORS",
        lambda sp: " ".join(f"{m.name}:{m.percent:g}%" for m in sp.spec.mirrors) or "-",
    ),
)

SERVICE_COLUMNS: tuple[Column, ...] = (
    Column("NAME", lambda sv: sv.metadata.name, wrap=False),
    Column("PHASE", lambda sv: sv.status.phase if sv.status else "-"),
    Column("AUTHORITIES", lambda sv: ",".join(sv.spec.authorities) or "-"),
    Column("ENDPOINTS", lambda sv: ",".join(sv.spec.endpoints)),
    Column("LB", lambda sv: sv.spec.lb),
)

PROXY_COLUMNS: tuple[Column, ...] = (
    Column("NODE", lambda p: p.node_id, wrap=False),
    Column("SERVICE", lambda p: p.service or "-"),
    Column("LISTENERS", lambda p: ",".join(p.listeners) or "-"),
    Column("ACKED", lambda p: p.acked_version or "-"),
    Column("SENT", lambda p: p.sent_version or "-"),
    Column("NACKED", lambda p: p.nacked_version or "-"),
    Column("CONNECTED", lambda p: _since(p.connected_at)),
    Column("LAST ERROR", lambda p: p.last_error or "-"),
)

CONTEXT_COLUMNS: tuple[Column, ...] = (
    Column("CURRENT", lambda row: "*" if row[0] else ""),
    Column("NAME", lambda row: row[1].name, wrap=False),
    Column("URL", lambda row: row[1].url),
    Column("TOKEN", lambda row: "set" if row[1].token else "-"),
)


def contexts_document(config: ConfigFile) -> dict[str, Any]:
    """The config file as a document, tokens redacted (scripts never need them echoed)."""
    return {
        "current-context": config.current_context,
        "contexts": [
            {"name": c.name, "url": c.url, "token": "<set>" if c.token else None}
            for c in config.contexts
        ],
    }


def list_document(kind: str, items: Sequence[BaseModel]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": f"{kind}List", "items": [dump(i) for i in items]}


def table(columns: Sequence[Column], rows: Sequence[Any]) -> Table:
    t = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for col in columns:
        if col.wrap:
            t.add_column(col.header, overflow="fold")
        else:
            t.add_column(col.header, no_wrap=True, overflow="ellipsis")
    for row in rows:
        t.add_row(*(col.cell(row) for col in columns))
    return t


def emit_document(doc: Any, fmt: Format, out: IO[str]) -> None:
    """Write `doc` as JSON or YAML (never rich: scripts parse this)."""
    if fmt is Format.yaml:
        out.write(yaml.safe_dump(doc, sort_keys=False))
    else:
        out.write(json.dumps(doc, indent=2) + "\n")
    out.flush()


def emit(
    fmt: Format,
    console: Console,
    out: IO[str],
    *,
    columns: Sequence[Column],
    rows: Sequence[Any],
    doc: Any,
    empty: str = "nothing found",
) -> None:
    """Show `rows` as a table, or `doc` as JSON/YAML."""
    if fmt is Format.table:
        if rows:
            console.print(table(columns, rows))
        else:
            console.print(empty)
    else:
        emit_document(doc, fmt, out)


def explanation_text(decision: dict[str, Any]) -> str:
    """A routing decision (the proxy's `/explain` JSON) as aligned lines for people."""
    dest = decision.get("destination")
    if not dest:
        dest = f"local answer {decision.get('status')} ({decision.get('error')})"
    lines = [f"{decision.get('kind', '?'):<10} -> {dest}"]
    endpoints = decision.get("endpoints") or []
    if endpoints:
        lines.append(f"endpoints  {', '.join(map(str, endpoints))}")
    lines.append(f"rule       {decision.get('rule', '-')}")
    lines.append(f"reason     {decision.get('reason', '-')}")
    key = decision.get("routing_key") or "-"
    if decision.get("carrier"):
        key += f" (from {decision['carrier']})"
    if decision.get("conflict"):
        key += " - carriers disagreed, key ignored"
    lines.append(f"key        {key}")
    if decision.get("fallback"):
        lines.append(f"fallback   {decision['fallback']}")
    if decision.get("mirrors"):
        lines.append(f"mirrors    {', '.join(map(str, decision['mirrors']))}")
    if decision.get("table_version"):
        lines.append(f"table      {decision['table_version']}")
    return "\n".join(lines)
