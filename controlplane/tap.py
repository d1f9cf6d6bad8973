"""The control plane's live-tap fan-in: viewers, their filters, and the records proxies send.

A viewer (`GET /api/v1/tap`) opens a filter here; every push stream of a proxy that can tap
is told the whole filter set whenever it changes (`version` / `wait_changed`), and the
records proxies send back are handed to the viewers their filters name. Message deliveries
reported by forklane consumers (`POST /api/v1/tap/deliveries`) are matched against the same
filters here, since consumers do not hold a push stream.

Invariants:
- nothing here waits for a viewer: each viewer has a bounded queue, and what does not fit is
  counted (`dropped`), as are the drops proxies report for it (`proxy_dropped`), so a viewer
  that stops reading slows neither a proxy nor the other viewers;
- a closed viewer's filter leaves the set at once, so proxies stop sending its records;
- the last `recent` request lines shown are kept by id (`r<n>`) with the subjects that saw
  them, so `forklane explain --from-tap ID` can replay one; nobody else may read them;
- filter ids are unique across replicas (`t<n>.<hub id>`); the filter set pushed to this
  replica's proxies is its own viewers' filters and the ones other replicas announced
  (`set_remote`, kept by `controlplane.tap_relay` through the database), and a record
  naming a remote filter is handed to `forward` for the replica that owns it;
- a capture (headers, body prefixes) was rendered and redacted by the proxy; it reaches
  only the viewers that asked for it and is never kept among the `recent` lines;
- at most `MAX_TAP_FILTERS` filters are open (the push message's limit): `open` refuses
  more (`TapsFull`); should the replicas together pass it, own filters are pushed first.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from forklane.proxy.push_messages import MAX_TAP_FILTERS, TapFilterSpec

__all__ = ["CAPTURE_QUEUE", "Forward", "TapHub", "TapsFull", "Viewer"]

CAPTURE_QUEUE = 200  # lines a capturing viewer's queue holds (each may carry 32 KiB of bodies)

Forward = Callable[[str, dict[str, Any]], None]
"""(owner hub, item) for viewers of another replica; the item is `{"proxy", "records",
"dropped"}` (records naming only that hub's filters, drops per filter) or `{"reporter",
"deliveries"}`. Must not block."""


class TapsFull(Exception):
    """As many filters as a push message carries are watched already (every replica's)."""


@dataclass(eq=False, slots=True)
class Viewer:
    spec: TapFilterSpec
    queue: asyncio.Queue[dict[str, Any]]
    subject: str = ""
    dropped: int = 0
    proxy_dropped: Counter[str] = field(default_factory=Counter)


class TapHub:
    def __init__(self, queue_size: int = 1000, recent: int = 2000, *,
                 redact: Iterable[str] = (), hub_id: str | None = None) -> None:
        self.id = hub_id or secrets.token_hex(4)
        self.redact = tuple(sorted({n.lower() for n in redact}))
        self._viewers: dict[str, Viewer] = {}
        self._remote: dict[str, tuple[TapFilterSpec, str]] = {}  # id -> (spec, owner hub)
        self.forward: Forward | None = None
        self.local_changed = asyncio.Event()  # own viewers came or went (for the relay)
        # the last `recent` request lines shown, by id, with who saw them (explain --from-tap)
        self._recent: OrderedDict[str, tuple[dict[str, Any], frozenset[str]]] = OrderedDict()
        self._recent_size = recent
        self._seq = itertools.count(1)
        self._ids = itertools.count(1)
        self._queue_size = queue_size
        self.version = 0
        self._changed = asyncio.Event()

    def open(
        self,
        keys: Iterable[str] = (),
        service: str | None = None,
        status_class: int | None = None,
        subject: str = "",
        *,
        headers: bool = False,
        body: int = 0,
    ) -> Viewer:
        if len(self._viewers) + len(self._remote) >= MAX_TAP_FILTERS:
            raise TapsFull(f"{MAX_TAP_FILTERS} taps are open already; try again later")
        captures = headers or body > 0
        spec = TapFilterSpec(
            id=f"t{next(self._ids)}.{self.id}", keys=tuple(sorted(set(keys))), service=service,
            status_class=status_class, headers=headers, body=body,
            redact=self.redact if captures else (),
        )
        size = min(self._queue_size, CAPTURE_QUEUE) if captures else self._queue_size
        viewer = Viewer(spec, asyncio.Queue(size), subject)
        self._viewers[spec.id] = viewer
        self._local_bump()
        return viewer

    def close(self, viewer: Viewer) -> None:
        if self._viewers.pop(viewer.spec.id, None) is not None:
            self._local_bump()

    def filters(self) -> tuple[TapFilterSpec, ...]:
        """What every proxy of this replica is told: own viewers first, then other replicas'."""
        own = tuple(v.spec for v in self._viewers.values())
        others = tuple(spec for spec, _ in self._remote.values())
        return (own + others)[:MAX_TAP_FILTERS]

    def local_filters(self) -> tuple[TapFilterSpec, ...]:
        return tuple(v.spec for v in self._viewers.values())

    def set_remote(self, remote: Mapping[str, tuple[TapFilterSpec, str]]) -> None:
        """The filters other replicas' viewers hold now (id -> spec, owner), replaced whole."""
        if dict(remote) != self._remote:
            self._remote = dict(remote)
            self._bump()

    def _local_bump(self) -> None:
        self.local_changed.set()
        self._bump()

    async def wait_changed(self, than: int) -> int:
        """Return the filter-set version once it differs from `than`."""
        while self.version == than:
            await self._changed.wait()
        return self.version

    def _bump(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def received(
        self, proxy: str, records: Iterable[Mapping[str, Any]], dropped: Mapping[str, int]
    ) -> None:
        """Records a proxy sent: each goes to the viewers it names, here or (`forward`) at the
        replica that holds them."""
        away: dict[str, tuple[list[Mapping[str, Any]], dict[str, int]]] = {}
        remote = self._remote
        for record in records:
            taps = record.get("taps")
            if not isinstance(taps, list):
                continue
            line = {k: v for k, v in record.items() if k != "taps"}
            line["type"] = "request"
            line["proxy"] = proxy
            subjects = set()
            for tap_id in taps:
                viewer = self._viewers.get(tap_id) if isinstance(tap_id, str) else None
                if viewer is not None:
                    if "id" not in line:
                        line["id"] = f"r{next(self._seq)}"
                    spec = viewer.spec
                    if "capture" in line and not (spec.headers or spec.body):
                        _put(viewer, {k: v for k, v in line.items() if k != "capture"})
                    else:
                        _put(viewer, line)
                    subjects.add(viewer.subject)
            if remote:
                for owner in {remote[t][1] for t in taps if isinstance(t, str) and t in remote}:
                    away.setdefault(owner, ([], {}))[0].append(record)
            if subjects:
                kept = {k: v for k, v in line.items() if k != "capture"}
                self._remember(kept, frozenset(subjects))
        for tap_id, count in dropped.items():
            viewer = self._viewers.get(tap_id)
            if viewer is not None and count > 0:
                viewer.proxy_dropped[proxy] += count
            elif tap_id in remote and count > 0:
                away.setdefault(remote[tap_id][1], ([], {}))[1][tap_id] = count
        if away and self.forward is not None:
            for owner, (recs, drops) in away.items():
                mine = {t for t, (_, o) in remote.items() if o == owner}
                self.forward(owner, {
                    "proxy": proxy, "dropped": drops,
                    "records": [{**r, "taps": [t for t in r["taps"] if t in mine]} for r in recs],
                })

    def deliveries(self, reporter: str, items: Iterable[Mapping[str, Any]], *,
                   relay: bool = True) -> int:
        """Message deliveries a consumer reported; returns how many some viewer here wanted.
        Those other replicas' viewers may want are forwarded (unless they were relayed)."""
        wanted = 0
        away: dict[str, list[Mapping[str, Any]]] = {}
        remote = self._remote if relay and self.forward is not None else {}
        for item in items:
            key = item.get("routing_key")
            service = item.get("service")
            line = {**item, "type": "delivery", "reporter": reporter}
            matched = False
            for viewer in self._viewers.values():
                if _shows_delivery(viewer.spec, key, service):
                    _put(viewer, line)
                    matched = True
            wanted += matched
            for owner in {o for spec, o in remote.values() if _shows_delivery(spec, key, service)}:
                away.setdefault(owner, []).append(item)
        if away and self.forward is not None:
            for owner, matched_items in away.items():
                self.forward(owner, {"reporter": reporter, "deliveries": matched_items})
        return wanted


    def _remember(self, line: dict[str, Any], subjects: frozenset[str]) -> None:
        recent = self._recent
        recent[line["id"]] = (line, subjects)
        while len(recent) > self._recent_size:
            recent.popitem(last=False)

    def recent(self, line_id: str) -> tuple[dict[str, Any], frozenset[str]] | None:
        """A request line shown lately, and the subjects whose taps showed it."""
        return self._recent.get(line_id)


def _shows_delivery(spec: TapFilterSpec, key: Any, service: Any) -> bool:
    """Deliveries have no status: a filter on a status class never shows them."""
    if spec.status_class is not None or (spec.keys and key not in spec.keys):
        return False
    return spec.service is None or service == spec.service


def _put(viewer: Viewer, line: dict[str, Any]) -> None:
    if viewer.queue.full():
        viewer.dropped += 1
    else:
        viewer.queue.put_nowait(line)
