"""`forklane explain`: where would a request with these headers go, and which rule decided it.

Two sources, one answer format (the proxy's `/explain` JSON):
- `--proxy-admin URL`: ask a running proxy (`POST /explain`), i.e. the table it runs now;
- otherwise fetch the control plane's current snapshot and run the proxy's own decision
  function on it in a subprocess (`python -m forklane.proxy explain`), because the SDK must never
  import the proxy.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import typer

from forklane._cli_common import (
    OutputOpt,
    UsageProblem,
    open_client,
    out_console,
)
from forklane._cli_render import (
    Format,
    emit_document,
    explanation_text,
)
from forklane._core import ROUTING_KEY_HEADER
from forklane.config import normalize_url
from forklane.errors import (
    ForklaneError,
    Invalid,
    Unavailable,
    error_from_response,
)

__all__ = ["explain"]


def _header_pairs(values: Sequence[str] | None) -> list[list[str]]:
    """`-H` values as `[name, value]` pairs: a repeated field stays repeated, as on the wire
    (two `baggage` fields are not one)."""
    out: list[list[str]] = []
    for value in values or ():
        name, sep, val = value.partition(":")
        if not sep or not name.strip():
            raise UsageProblem(f"-H {value!r}: expected 'NAME: VALUE'")
        out.append([name.strip().lower(), val.strip()])
    return out


def _explain_via_admin(admin: str, request: dict[str, Any]) -> dict[str, Any]:
    """`POST /explain` on a proxy's admin port: the decision of the table it runs now."""
    url = normalize_url(admin) + "/explain"
    try:
        r = httpx.post(url, json=request, timeout=10.0)
    except httpx.HTTPError as exc:
        raise Unavailable(f"proxy admin at {admin} unreachable: {exc}") from None
    try:
        body = r.json()
    except ValueError:
        body = None
    if r.status_code >= 400:
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            cls = Unavailable if r.status_code == 503 else Invalid
            raise cls(f"proxy admin: {body['error']}", status=r.status_code)
        raise error_from_response(r.status_code, r.content, f"POST {url}")
    if not isinstance(body, dict):
        raise ForklaneError(f"POST {url}: the answer is not a JSON object")
    return body


def _explain_via_snapshot(snapshot: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """Run the proxy's own decision code on the snapshot in a subprocess (the SDK never
    imports the proxy), so the answer is exactly what a proxy on that snapshot would do."""
    with tempfile.TemporaryDirectory(prefix="forklane-explain-") as tmp:
        config = Path(tmp) / "snapshot.json"
        config.write_text(json.dumps(snapshot), encoding="utf-8")
        argv = [sys.executable, "-P", "-m", "forklane.proxy", "explain", "--config", str(config),
                "--listener", request["listener"], "--method", request["method"],
                "--host", request["host"], "--path", request["path"], "-o", "json"]  # fmt: skip
        for name, value in request["headers"]:
            argv += ["-H", f"{name}: {value}"]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        except subprocess.TimeoutExpired:
            raise ForklaneError("proxy explain did not finish within 60s") from None
    if done.returncode != 0:
        message = (done.stderr.strip().splitlines() or ["no reason given"])[-1]
        raise ForklaneError(f"explain failed: {message}")
    try:
        result = json.loads(done.stdout)
    except ValueError:
        raise ForklaneError("explain failed: the proxy printed no JSON decision") from None
    if not isinstance(result, dict):
        raise ForklaneError("explain failed: the proxy printed no JSON decision")
    return result


def carrier_fields(carrier: str | None, key: str | None) -> list[list[str]]:
    """The field that carried `key` as the tap recorded it (`header:NAME`, `baggage:MEMBER`,
    `tracestate:MEMBER`), rebuilt so the replayed request carries the key the same way."""
    if not carrier or not key:
        return []
    kind, _, name = carrier.partition(":")
    if kind == "header":
        return [[name, key]]
    if kind == "baggage":
        return [["baggage", f"{name}={key}"]]
    if kind == "tracestate":  # tracestate counts only beside a valid traceparent
        return [["traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"],
                ["tracestate", f"{name}={key}"]]
    return []


def _from_tap(line: dict[str, Any]) -> dict[str, Any]:
    target = str(line.get("target") or "/")
    return {
        "listener": str(line.get("listener") or "outbound"),
        "method": str(line.get("method") or "GET"),
        "host": str(line.get("host") or ""),
        "path": target.partition("?")[0] or "/",
        "headers": carrier_fields(line.get("carrier"), line.get("routing_key")),
    }


def _recorded(line: dict[str, Any]) -> str:
    return (f"tap {line.get('id')}: {line.get('method')} {line.get('target')} on "
            f"{line.get('proxy')} went {line.get('kind')} via {line.get('rule')} to "
            f"{line.get('destination')} ({line.get('status')})")


def explain(
    ctx: typer.Context,
    host: Annotated[
        str | None,
        typer.Option("--host", metavar="HOST", help="Host / :authority of the request"),
    ] = None,
    path: Annotated[str, typer.Option("--path", metavar="PATH")] = "/",
    method: Annotated[str, typer.Option("--method", "-X", metavar="METHOD")] = "GET",
    header: Annotated[
        list[str] | None, typer.Option("--header", "-H", metavar="'NAME: VALUE'", help="repeatable")
    ] = None,
    routing_key: Annotated[
        str | None,
        typer.Option("--routing-key", "-k", metavar="KEY", help=f"adds {ROUTING_KEY_HEADER}"),
    ] = None,
    listener: Annotated[
        str, typer.Option("--listener", metavar="outbound|inbound", help="which side decides")
    ] = "outbound",
    proxy_admin: Annotated[
        str | None,
        typer.Option(
            "--proxy-admin",
            metavar="URL",
            help="ask this proxy's admin port instead, e.g. http://127.0.0.1:15000",
        ),
    ] = None,
    from_tap: Annotated[
        str | None,
        typer.Option("--from-tap", metavar="ID",
                     help="replay a request `forklane tap -o json` showed (its id)"),
    ] = None,
    output: OutputOpt = Format.table,
) -> None:
    """Say where a request with these headers would go, and which rule decided it.

    Without --proxy-admin, the control plane's current snapshot is fetched and the proxy's
    own decision function runs on it locally. Repeated -H fields stay repeated, as on the
    wire. --from-tap ID replays a request a tap showed (method, host, path and the key in
    the carrier it came in) and says whether today's answer is the one recorded.
    """
    if listener not in ("outbound", "inbound"):
        raise UsageProblem(f"--listener {listener!r}: expected outbound or inbound")
    recorded: dict[str, Any] | None = None
    if from_tap:
        with open_client(ctx) as client:
            recorded = client.call("GET", f"/api/v1/tap/requests/{quote(from_tap, safe='')}")
        if not isinstance(recorded, dict):
            raise ForklaneError(f"tap line {from_tap}: the answer is not a JSON object")
        request = _from_tap(recorded)
        if request["listener"] not in ("outbound", "inbound"):
            raise ForklaneError(f"tap line {from_tap}: listener {request['listener']!r}")
    else:
        if not host:
            raise UsageProblem("--host is required (or --from-tap ID)")
        headers = _header_pairs(header)
        if routing_key:
            headers.append([ROUTING_KEY_HEADER, routing_key])
        request = {
            "listener": listener,
            "method": method.upper(),
            "host": host,
            "path": path,
            "headers": headers,
        }
    if proxy_admin:
        decision = _explain_via_admin(proxy_admin, request)
    else:
        with open_client(ctx) as client:
            snapshot = client.snapshot()
        decision = _explain_via_snapshot(snapshot, request)
    if recorded is not None:
        decision["recorded"] = {k: recorded.get(k) for k in (
            "id", "proxy", "time", "kind", "rule", "destination", "status", "routing_key",
            "carrier")}
        decision["same_as_recorded"] = (
            decision.get("kind") == recorded.get("kind")
            and decision.get("destination") == recorded.get("destination")
        )
    if output in (Format.table, Format.wide):
        console = out_console()
        if recorded is not None:
            console.print(_recorded(recorded), highlight=False)
            console.print("now: same answer" if decision["same_as_recorded"]
                          else "now: a different answer (the routing changed since)",
                          highlight=False)
        console.print(explanation_text(decision), highlight=False)
    else:
        emit_document(camel_keys(decision), output, sys.stdout)


def camel_keys(doc: Any) -> Any:
    """`routing_key` → `routingKey` all the way down: one key style in every output."""
    if isinstance(doc, dict):
        return {_camel(k): camel_keys(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [camel_keys(v) for v in doc]
    return doc


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)
