"""`forklane tap`: a live view of where a sandbox's requests go, and why.

Lines come from the control plane (`GET /api/v1/tap`), which fans in what every proxy
decided for the filter (the proxies evaluate it where they decide). People get one line per
decision, `-o json` gives the control plane's lines unchanged (NDJSON) for scripts. Drops
(a viewer or a proxy buffer that overflowed) are shown on stderr, never hidden.
`--capture-headers` and `--capture-body SIZE` ask the proxies for the heads and the first
bytes of each body, redacted by the proxy before they leave it; people get them indented
under the line (`>` request, `<` response).
"""

from __future__ import annotations

import json
import re
import sys
import time
from typing import Annotated, Any

import typer

from forklane._cli_common import OutputOpt, UsageProblem, open_client
from forklane._cli_render import Format

__all__ = ["format_capture", "format_line", "parse_size", "tap"]

_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
MAX_CAPTURE_BODY = 16 * 1024
_SIZE = re.compile(r"(\d+)\s*(b|k|kb|kib)?", re.I)


def parse_size(text: str) -> int:
    """`512`, `512B`, `4k`, `4KiB` → bytes. Raises ValueError."""
    found = _SIZE.fullmatch(text.strip())
    if found is None:
        raise ValueError(f"{text!r}: expected bytes like 512, 4KiB or 16k")
    unit = (found.group(2) or "b").lower()
    return int(found.group(1)) * (1 if unit == "b" else 1024)


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


def format_capture(doc: dict[str, Any]) -> list[str]:
    """The captured heads and body prefixes of a request line, indented, for people."""
    capture = doc.get("capture")
    if not isinstance(capture, dict):
        return []
    out: list[str] = []
    for side, mark in (("request", ">"), ("response", "<")):
        part = capture.get(side)
        if not isinstance(part, dict):
            continue
        for pair in part.get("headers") or ():
            if isinstance(pair, list) and len(pair) == 2:
                out.append(f"    {mark} {pair[0]}: {pair[1]}")
        if "body" in part:
            shown = part.get("body") or ""
            total = part.get("body_bytes", 0)
            note = " (base64)" if part.get("body_encoding") == "base64" else ""
            more = f", first {len(shown)} shown" if part.get("body_truncated") else ""
            out.append(f"    {mark} body: {total} bytes{more}{note}")
            if shown:
                out.extend(f"    {mark}   {line}" for line in str(shown).splitlines()[:50])
    return out


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
    capture_headers: Annotated[
        bool, typer.Option("--capture-headers", help="show request and response headers "
                           "(authorization, cookies and configured ones redacted)")
    ] = False,
    capture_body: Annotated[
        str | None, typer.Option("--capture-body", metavar="SIZE",
                                 help="show the first SIZE of each body (e.g. 4KiB; at most 16KiB)")
    ] = None,
    output: OutputOpt = Format.table,
) -> None:
    """Show, live, every routing decision made for a sandbox (or key), from every proxy.

    Each line: time, proxy, listener, protocol, method, path, service, carrier, rule,
    destination, status and latency; message deliveries from forklane consumers too.
    With --capture-headers / --capture-body, the heads and body prefixes follow each line
    (credentials and the control plane's tap_redact_headers shown as [redacted]).
    """
    if status is not None and status.lower() not in _STATUS_CLASSES:
        raise UsageProblem(f"--status {status!r}: expected one of {', '.join(_STATUS_CLASSES)}")
    if seconds is not None and seconds <= 0:
        raise UsageProblem("--seconds must be positive")
    if output not in (Format.table, Format.wide, Format.json):
        raise UsageProblem("-o: tap prints table or json (one JSON object per line)")
    body = 0
    if capture_body is not None:
        try:
            body = parse_size(capture_body)
        except ValueError as exc:
            raise UsageProblem(f"--capture-body {exc}") from None
        if not 0 < body <= MAX_CAPTURE_BODY:
            raise UsageProblem(f"--capture-body {capture_body!r}: from 1 byte to 16KiB")
    with open_client(ctx) as client:
        for doc in client.tap(sandbox, service=service, key=key, status=status, seconds=seconds,
                              capture_headers=capture_headers, capture_body=body):
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
                    sys.stdout.write("\n".join([line, *format_capture(doc)]) + "\n")
                    sys.stdout.flush()
