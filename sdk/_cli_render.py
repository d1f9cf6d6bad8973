"""How the CLI shows resources: tables for people; JSON, YAML, names and JSONPath for scripts.

Pure functions from wire models to rows or documents; the only I/O is `emit`, which writes
to a given text stream. `-o` takes `table` (default), `wide` (more columns), `name`
(`kind/name` per line), `json`, `yaml` and `jsonpath=TEMPLATE` (kubectl's templates:
`{.items[*].metadata.name}`, `{range .items[*]}{.metadata.name}{"\\n"}{end}`).

Invariants: tables are never wrapped, whatever the terminal: one row per line, columns
aligned with spaces (as kubectl prints them), so `grep` and `awk` work on them; `-o json`
and `-o yaml` print exactly the API's JSON form (camelCase, no nulls), a single object for
`get`, and `{"apiVersion": …, "kind": "…List", "items": [...]}` for lists.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

import yaml
from pydantic import BaseModel
from rich.console import Console

from forklane.config import ConfigFile
from forklane.controlplane.wire import API_VERSION, ConnectionStatus, ForkSpec, Sandbox, Split, dump

__all__ = [
    "CONTEXT_COLUMNS",
    "OUTPUTS",
    "PROXY_COLUMNS",
    "ROUTEGROUP_COLUMNS",
    "SANDBOX_COLUMNS",
    "SERVICE_COLUMNS",
    "SPLIT_COLUMNS",
    "Column",
    "Format",
    "JsonPath",
    "connection_line",
    "emit",
    "emit_document",
    "explanation_text",
    "humanize_seconds",
    "list_document",
    "names_of",
    "parse_output",
    "render_jsonpath",
]


class Format(enum.StrEnum):
    table = "table"
    wide = "wide"
    name = "name"
    json = "json"
    yaml = "yaml"


class JsonPath(str):
    """`-o jsonpath=TEMPLATE`: the template."""


OUTPUTS = "table|wide|name|json|yaml|jsonpath=TEMPLATE"


def parse_output(value: object) -> Format | JsonPath:
    """The value of `-o`; ValueError naming the choices for anything else."""
    if isinstance(value, Format | JsonPath):
        return value
    text = str(value)
    if text.startswith("jsonpath="):
        template = text.removeprefix("jsonpath=")
        render_jsonpath(template, {})  # a template that does not parse fails now
        return JsonPath(template)
    try:
        return Format(text)
    except ValueError:
        raise ValueError(f"{text!r} is not one of {OUTPUTS}") from None


_BRACES = re.compile(r"\{((?:[^{}\"]|\"(?:[^\"\\]|\\.)*\")*)\}")


def _evaluate(expr: str, doc: Any) -> list[Any]:
    from jsonpath_ng.exceptions import JsonPathParserError
    from jsonpath_ng.ext import parse  # type: ignore[attr-defined]

    path = expr.strip()
    if path in ("", "."):
        return [doc]
    try:
        compiled = parse("$" + path if path.startswith((".", "[")) else "$." + path)
    except (JsonPathParserError, Exception) as exc:
        raise ValueError(f"jsonpath {expr!r}: {exc}") from None
    return [m.value for m in compiled.find(doc)]


def _text(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def render_jsonpath(template: str, doc: Any) -> str:
    """kubectl's JSONPath template: text, `{path}`, `{"literal"}`, `{range path}…{end}`."""
    parts: list[tuple[str, str]] = []  # ("text"|"expr", value)
    pos = 0
    for found in _BRACES.finditer(template):
        if found.start() > pos:
            parts.append(("text", template[pos:found.start()]))
        parts.append(("expr", found.group(1)))
        pos = found.end()
    if pos < len(template):
        parts.append(("text", template[pos:]))

    def run(items: list[tuple[str, str]], current: Any) -> str:
        out: list[str] = []
        i = 0
        while i < len(items):
            kind, value = items[i]
            body = value.strip()
            if kind == "text":
                out.append(value)
            elif body.startswith('"') and body.endswith('"'):
                out.append(json.loads(body, strict=False))
            elif body.startswith("range "):
                depth, j = 1, i + 1
                while j < len(items) and depth:
                    if items[j][0] == "expr" and items[j][1].strip().startswith("range "):
                        depth += 1
                    elif items[j][0] == "expr" and items[j][1].strip() == "end":
                        depth -= 1
                    j += 1
                if depth:
                    raise ValueError("jsonpath: {range} without {end}")
                for element in _evaluate(body.removeprefix("range "), current):
                    out.append(run(items[i + 1 : j - 1], element))
                i = j
                continue
            elif body == "end":
                raise ValueError("jsonpath: {end} without {range}")
            else:
                out.append(" ".join(_text(v) for v in _evaluate(body, current)))
            i += 1
        return "".join(out)

    return run(parts, doc)


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


def connection_line(c: ConnectionStatus) -> str:
    """`connected from HOST since T` (or reconnecting), as get and describe show it."""
    since = c.since.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{c.state} from {c.host} since {since}"


def _fork_cell(sb: Sandbox, f: ForkSpec) -> str:
    for c in (sb.status.connections or ()) if sb.status else ():
        if c.service == f.service:
            return f"{f.service}=[{connection_line(c)}]"
    if f.local:
        return f"{f.service}=local (not connected)"
    if f.fork_of is None:
        return f"{f.service}={','.join(f.endpoints)}"
    return f"{f.service}<{f.fork_of.namespace}/{f.fork_of.name}"


SANDBOX_COLUMNS: tuple[Column, ...] = (
    Column("NAME", lambda sb: sb.metadata.name, wrap=False),
    Column("PHASE", lambda sb: sb.status.phase if sb.status else "-"),
    Column("ROUTING KEY", _sandbox_key, wrap=False),
    Column("FORKS", lambda sb: " ".join(_fork_cell(sb, f) for f in sb.spec.forks)),
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
    """The config file's contexts as a list document, tokens redacted."""
    return {
        "apiVersion": API_VERSION,
        "kind": "ContextList",
        "currentContext": config.current_context,
        "items": [
            {"name": c.name, "url": c.url, "token": "<set>" if c.token else None}
            for c in config.contexts
        ],
    }


def list_document(kind: str, items: Sequence[BaseModel]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": f"{kind}List", "items": [dump(i) for i in items]}


def table(columns: Sequence[Column], rows: Sequence[Any]) -> str:
    """Aligned columns, three spaces apart, one row per line, never wrapped."""
    cells = [[col.header for col in columns]]
    cells += [[col.cell(row).replace("\n", " ") for col in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return "\n".join(
        "   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    ) + "\n"


def names_of(doc: Any) -> list[str]:
    """`kind/name` of a resource document, or of every item of a list document."""
    items = doc.get("items", [doc]) if isinstance(doc, dict) else []
    out = []
    for item in items:
        if isinstance(item, dict):
            kind = str(item.get("kind", "")).lower()
            name = (item.get("metadata") or {}).get("name") or item.get("name") or item.get("id")
            out.append(f"{kind}/{name}" if kind else str(name))
    return out


def emit_document(doc: Any, fmt: Format | JsonPath, out: IO[str]) -> None:
    """Write `doc` as JSON, YAML, names or a JSONPath template (scripts parse this)."""
    if isinstance(fmt, JsonPath):
        out.write(render_jsonpath(fmt, doc))
        if not fmt.endswith("\\n"):
            out.write("\n")
    elif fmt is Format.yaml:
        out.write(yaml.safe_dump(doc, sort_keys=False))
    elif fmt is Format.name:
        out.write("".join(f"{n}\n" for n in names_of(doc)))
    else:
        out.write(json.dumps(doc, indent=2) + "\n")
    out.flush()


def emit(
    fmt: Format | JsonPath,
    console: Console,
    out: IO[str],
    *,
    columns: Sequence[Column],
    rows: Sequence[Any],
    doc: Any,
    empty: str = "nothing found",
    wide: Sequence[Column] = (),
) -> None:
    """Show `rows` as a table (`wide`: with the extra columns), or `doc` for scripts."""
    if fmt in (Format.table, Format.wide):
        if rows:
            out.write(table([*columns, *(wide if fmt is Format.wide else ())], rows))
        else:
            console.print(empty)
        out.flush()
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
