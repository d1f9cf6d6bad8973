"""Where a message carries its routing key: reading it, the way the sidecars read a request.

A message has no sidecar in front of it, so the consumer reads the key itself. It must read it
exactly as the data plane reads an HTTP request, or a message and the request that produced it
could be routed to different sides. The rules (the proxy's `context.carriers`, restated here
because the SDK may not import the proxy; a differential test runs both over the same inputs):

- carriers are an ordered list of `(kind, name)`: a `header`, a W3C `baggage` member, or a
  W3C `tracestate` member; the control plane's routes view says which list the proxies use;
- a carrier value that is not a valid routing key is ignored (no error, no conflict);
- `baggage` members follow W3C Baggage: a malformed member is dropped whole, values are
  percent-decoded as UTF-8, `+` is a literal plus;
- `tracestate` counts only next to a valid `traceparent`, and a list of more than 32 members
  counts not at all (W3C Trace Context);
- two different valid keys make a conflict: no key (the message belongs to the baseline);
  when all agree, the key is attributed to the carrier that comes first.

Pure: strings in, frozen values out; imports no broker client and no I/O library.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "DEFAULT_CARRIERS",
    "Carrier",
    "KeyReading",
    "carriers_from_json",
    "normalise_headers",
    "read_routing_key",
]

CarrierKind = Literal["header", "baggage", "tracestate"]


@dataclass(frozen=True, slots=True)
class Carrier:
    """One place a routing key may travel (`header` names are lowercase)."""

    kind: CarrierKind
    name: str

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.name}"


DEFAULT_CARRIERS: tuple[Carrier, ...] = (
    Carrier("header", "x-forklane-routing-key"),
    Carrier("baggage", "forklane-routing-key"),
)


@dataclass(frozen=True, slots=True)
class KeyReading:
    """What the carriers said. `conflict` implies `key is None`."""

    key: str | None
    carrier: str | None
    conflict: bool


NO_KEY = KeyReading(None, None, False)
_CONFLICT = KeyReading(None, None, True)
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,127}")
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_BVALUE = r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*"
_OWS = r"[ \t]*"
_BAGGAGE_MEMBER = re.compile(
    rf"({_TOKEN}){_OWS}={_OWS}({_BVALUE})((?:{_OWS};{_OWS}{_TOKEN}(?:{_OWS}={_OWS}{_BVALUE})?)*)"
)
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_TS_KEY = r"(?:[a-z0-9][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})"
_TS_MEMBER = re.compile(rf"({_TS_KEY})=([\x20-\x2b\x2d-\x3c\x3e-\x7e]{{0,255}}[\x21-\x2b\x2d-\x3c\x3e-\x7e])")
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_TS_MAX_MEMBERS = 32


def carriers_from_json(items: object) -> tuple[Carrier, ...]:
    """The routes view's `carriers` list (`[{"kind": …, "name": …}]`); ValueError if malformed."""
    if not isinstance(items, list) or not items:
        raise ValueError("carriers: expected a non-empty list")
    out: list[Carrier] = []
    for item in items:
        if not isinstance(item, dict):
            raise ValueError(f"carriers: not an object: {item!r}")
        kind, name = item.get("kind"), item.get("name")
        if kind not in ("header", "baggage", "tracestate") or not isinstance(name, str) or not name:
            raise ValueError(f"carriers: bad carrier {item!r}")
        out.append(Carrier(kind, name.lower() if kind == "header" else name))
    return tuple(out)


def normalise_headers(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Lowercase names, repeated fields joined with `,` in order (as HTTP combines them);
    values that are not text are left out."""
    out: dict[str, str] = {}
    for name, value in pairs:
        if not isinstance(name, str) or not isinstance(value, str):
            continue
        lname = name.lower()
        out[lname] = f"{out[lname]},{value}" if lname in out else value
    return out


def _percent_decode(raw: str) -> str | None:
    if "%" not in raw:
        return raw
    if _BAD_ESCAPE.search(raw):
        return None
    data = bytearray()
    pos = 0
    for m in _ESCAPE.finditer(raw):
        data += raw[pos : m.start()].encode("ascii")
        data.append(int(m.group(1), 16))
        pos = m.end()
    data += raw[pos:].encode("ascii")
    return data.decode("utf-8", errors="replace")


def _traceparent_valid(value: str | None) -> bool:
    if value is None:
        return False
    text = value.strip(" \t")
    m = _TRACEPARENT.match(text) if len(text) >= 55 else None
    if m is None:
        return False
    version, trace_id, parent_id, _ = m.groups()
    if version == "ff" or trace_id == "0" * 32 or parent_id == "0" * 16:
        return False
    if len(text) == 55:
        return True
    return (version != "00" and text[55] == "-" and "," not in text
            and all(0x20 < ord(c) < 0x7F for c in text))  # fmt: skip


def _baggage_keys(value: str, name: str) -> list[str]:
    out: list[str] = []
    for raw in value.split(","):
        m = _BAGGAGE_MEMBER.fullmatch(raw.strip(" \t"))
        if m is not None and m.group(1) == name:
            decoded = _percent_decode(m.group(2))
            if decoded is not None and _KEY.fullmatch(decoded):
                out.append(decoded)
    return out


def _tracestate_keys(value: str, name: str) -> list[str]:
    members = [t for t in (raw.strip(" \t") for raw in value.split(",")) if t]
    if len(members) > _TS_MAX_MEMBERS:
        return []
    out: list[str] = []
    for text in members:
        m = _TS_MEMBER.fullmatch(text)
        if m is not None and m.group(1) == name and _KEY.fullmatch(m.group(2)):
            out.append(m.group(2))
    return out


def read_routing_key(carriers: tuple[Carrier, ...], headers: Mapping[str, str]) -> KeyReading:
    """The message's routing key from `headers` (lowercase names, see `normalise_headers`)."""
    found: list[tuple[int, str, str]] = []
    traced: bool | None = None
    for priority, carrier in enumerate(carriers):
        if carrier.kind == "header":
            value = headers.get(carrier.name)
            keys = ([] if value is None else
                    [p.strip(" \t") for p in value.split(",") if _KEY.fullmatch(p.strip(" \t"))])  # fmt: skip
        elif carrier.kind == "baggage":
            value = headers.get("baggage")
            keys = [] if value is None else _baggage_keys(value, carrier.name)
        else:
            value = headers.get("tracestate")
            if value is not None and traced is None:
                traced = _traceparent_valid(headers.get("traceparent"))
            keys = [] if value is None or not traced else _tracestate_keys(value, carrier.name)
        found += [(priority, carrier.id, key) for key in keys]
    if not found:
        return NO_KEY
    _, carrier_id, key = min(found)
    if any(item[2] != key for item in found):
        return _CONFLICT
    return KeyReading(key, carrier_id, False)
