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
- filters are per replica: a proxy connected to another replica does not see this one's
  viewers (one replica answers a viewer).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from forklane.proxy.push_messages import TapFilterSpec
from forklane.proxy.tap import TapFilter

__all__ = ["TapHub", "Viewer"]


@dataclass(eq=False, slots=True)
class Viewer:
    spec: TapFilterSpec
    queue: asyncio.Queue[dict[str, Any]]
    subject: str = ""
    dropped: int = 0
    proxy_dropped: Counter[str] = field(default_factory=Counter)

    @property
    def filter(self) -> TapFilter:
        s = self.spec
        return TapFilter(s.id, frozenset(s.keys), s.service, s.status_class)


class TapHub:
    def __init__(self, queue_size: int = 1000, recent: int = 2000) -> None:
        self._viewers: dict[str, Viewer] = {}
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
    ) -> Viewer:
        spec = TapFilterSpec(
            id=f"t{next(self._ids)}", keys=tuple(sorted(set(keys))), service=service,
            status_class=status_class,
        )
        viewer = Viewer(spec, asyncio.Queue(self._queue_size), subject)
        self._viewers[spec.id] = viewer
        self._bump()
        return viewer

    def close(self, viewer: Viewer) -> None:
        if self._viewers.pop(viewer.spec.id, None) is not None:
            self._bump()

    def filters(self) -> tuple[TapFilterSpec, ...]:
        return tuple(v.spec for v in self._viewers.values())

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
        """Records a proxy sent: each goes to the viewers it names."""
        for record in records:
            taps = record.get("taps")
            if not isinstance(taps, list):
                continue
            line = {k: v for k, v in record.items() if k != "taps"}
            line["type"] = "request"
            line["proxy"] = proxy
            line["id"] = f"r{next(self._seq)}"
            subjects = set()
            for tap_id in taps:
                viewer = self._viewers.get(tap_id) if isinstance(tap_id, str) else None
                if viewer is not None:
                    _put(viewer, line)
                    subjects.add(viewer.subject)
            if subjects:
                self._remember(line, frozenset(subjects))
        for tap_id, count in dropped.items():
            viewer = self._viewers.get(tap_id)
            if viewer is not None and count > 0:
                viewer.proxy_dropped[proxy] += count

    def deliveries(self, reporter: str, items: Iterable[Mapping[str, Any]]) -> int:
        """Message deliveries a consumer reported; returns how many some viewer wanted."""
        wanted = 0
        for item in items:
            key = item.get("routing_key")
            service = item.get("service")
            line = {**item, "type": "delivery", "reporter": reporter}
            matched = False
            for viewer in self._viewers.values():
                f = viewer.filter
                if (not f.keys or key in f.keys) and (f.service is None or service == f.service):
                    if f.status_class is None:
                        _put(viewer, line)
                        matched = True
            wanted += matched
        return wanted


    def _remember(self, line: dict[str, Any], subjects: frozenset[str]) -> None:
        recent = self._recent
        recent[line["id"]] = (line, subjects)
        while len(recent) > self._recent_size:
            recent.popitem(last=False)

    def recent(self, line_id: str) -> tuple[dict[str, Any], frozenset[str]] | None:
        """A request line shown lately, and the subjects whose taps showed it."""
        return self._recent.get(line_id)


def _put(viewer: Viewer, line: dict[str, Any]) -> None:
    if viewer.queue.full():
        viewer.dropped += 1
    else:
        viewer.queue.put_nowait(line)
