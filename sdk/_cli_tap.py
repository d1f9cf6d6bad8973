"""`forklane tap`: a live view of where a sandbox's requests go, and why.

Lines come from the control plane (`GET /api/v1/tap`), which fans in what every proxy
decided for the filter (the proxies evaluate it where they decide). People get one line per
decision, `-o json` gives the control plane's lines unchanged (NDJSON) for scripts. Drops
(a viewer or a proxy buffer that overflowed) are shown on stderr, never hidden.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any

import typer

from forklane._cli_common import OutputOpt, UsageProblem, open_client
from forklane._cli_render import Format

__all__ = ["format_line", "tap"]

_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


def _clock(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    return time.strftime("%H:%M:%S", time.localtime(value)) + f".{int(value * 1000) % 1000:03d}"


def _s(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def format_line(doc: dict[str, Any]) -> str | None:
    """One tap line for people (None: nothing to print on stdout)."""
    kind = doc.get("type")
    if kind == "request":
        latency = doc.get("duration_ms")
        return " ".join((
            _clock(doc.get("time")), _s(doc.get("proxy")), _s(doc.get("listener")),
            _s(doc.get("protocol")), _s(doc.get("method")), _s(doc.get("target")),
            f"service={_s(doc.get('service'))}", f"carrier={_s(doc.get('carrier'))}",
            f"rule={_s(doc.get('rule'))}", f"-> {_s(doc.get('destination'))}",
            _s(doc.get("status")), f"{latency:.2f}ms" if isinstance(latency, int | float) else "-",
        ))
    if kind == "delivery":
        return " ".join((
            _clock(doc.get("time")), _s(doc.get("reporter")), "message",
            _s(doc.get("broker")), _s(doc.get("source")),
            f"service={_s(doc.get('service'))}", f"side={_s(doc.get('side'))}",
            f"rule={_s(doc.get('reason'))}", f"owner={_s(doc.get('owner'))}",
            _s(doc.get("outcome")),
        ))
    return None


def tap(
    ctx: typer.Context,
    sandbox: Annotated[
        str | None, typer.Option("--sandbox", metavar="NAME", help="requests carrying its key")
    ] = None,
    service: Annotated[
        str | None, typer.Option("--service", metavar="NAME", help="only this service")
    ] = None,
    key: Annotated[
        str | None, typer.Option("--key", metavar="KEY", help="a routing key (admins)")
    ] = None,
    status: Annotated[
        str | None, typer.Option("--status", metavar="5xx", help="only this status class")
    ] = None,
    seconds: Annotated[
        float | None, typer.Option("--seconds", metavar="N", help="stop after N seconds")
    ] = None,
    output: OutputOpt = Format.table,
) -> None:
    """Show, live, every routing decision made for a sandbox (or key), from every proxy.

    Each line: time, proxy, listener, protocol, method, path, service, carrier, rule,
    destination, status and latency; message deliveries from forklane consumers too.
    """
    if status is not None and status.lower() not in _STATUS_CLASSES:
        raise UsageProblem(f"--status {status!r}: expected one of {', '.join(_STATUS_CLASSES)}")
    if seconds is not None and seconds <= 0:
        raise UsageProblem("--seconds must be positive")
    if output not in (Format.table, Format.wide, Format.json):
        raise UsageProblem("-o: tap prints table or json (one JSON object per line)")
    with open_client(ctx) as client:
        for doc in client.tap(sandbox, service=service, key=key, status=status, seconds=seconds):
            if output == Format.json:
                sys.stdout.write(json.dumps(doc, separators=(",", ":")) + "\n")
                sys.stdout.flush()
                continue
            kind = doc.get("type")
            if kind == "started":
                sys.stderr.write(f"tap {doc.get('id')} started; Ctrl-C to stop\n")
            elif kind == "dropped":
                sys.stderr.write(
                    f"! dropped: {doc.get('viewer', 0)} here, by proxy {doc.get('proxies', {})}\n"
                )
            else:
                line = format_line(doc)
                if line is not None:
                    sys.stdout.write(line + "\n")
                    sys.stdout.flush()
