"""The consumer's copy of the routes view: listed, then watched, and kept on disk.

`RoutesWatcher` lists `GET /api/v1/routes` for one service, then watches it (Kubernetes
style: watch from the list's resourceVersion; list again on 410 Gone and whenever a stream
ends, which also picks up a changed carrier list after a restart), so its `view` is current
within the control plane's push latency. When the control plane cannot be reached it keeps the
last view it had and retries with jittered backoff: consumption never stops for an outage.

With `cache_file`, every view it learns is written atomically (temporary file, fsync, rename),
and a restarted consumer starts from that file while the control plane is down, as a restarted
sidecar starts from its last snapshot. Without a cache file and without an answer yet, the view
is empty: every message is the baseline's, which is what the data plane does with no table.

Invariants: `view` is replaced whole (readers never see half an update); `on_change` is
called after each replacement, in the watcher's task; nothing here raises into the consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forklane.errors import Expired, ForklaneError
from forklane.messaging.carriers import DEFAULT_CARRIERS, Carrier, carriers_from_json
from forklane.messaging.rule import RoutesView

if TYPE_CHECKING:
    from forklane.client import AsyncClient

__all__ = ["RoutesWatcher", "load_view", "save_view", "view_from_list"]

log = logging.getLogger("forklane.messaging.routes")
_LABEL_VALUE_MAX = 63  # longer service names are filtered here, not by a label selector


def view_from_list(service: str, doc: Mapping[str, Any]) -> RoutesView:
    """A `RouteList` document → the view for `service`; ValueError when malformed."""
    items = doc.get("items")
    meta = doc.get("metadata")
    if not isinstance(items, list) or not isinstance(meta, dict):
        raise ValueError("routes: not a RouteList")
    forks: dict[str, str] = {}
    for item in items:
        spec = item.get("spec") if isinstance(item, dict) else None
        if not isinstance(spec, dict):
            raise ValueError("routes: an item has no spec")
        if spec.get("service") == service:
            forks[str(spec["routingKey"])] = str(spec["sandbox"])
    return RoutesView(service, forks, carriers_from_json(doc.get("carriers")),
                      str(meta.get("resourceVersion", "")))  # fmt: skip


def _carrier_json(carriers: tuple[Carrier, ...]) -> list[dict[str, str]]:
    return [{"kind": c.kind, "name": c.name} for c in carriers]


def save_view(path: Path, view: RoutesView) -> None:
    """Write `view` atomically; a crash leaves the old file or the new one."""
    doc = {"service": view.service, "version": view.version, "forks": dict(view.forks),
           "carriers": _carrier_json(view.carriers)}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load_view(path: Path, service: str) -> RoutesView | None:
    """The cached view for `service`, or None (missing, unreadable, another service's)."""
    try:
        doc = json.loads(path.read_text())
        if doc.get("service") != service or not isinstance(doc.get("forks"), dict):
            return None
        forks = {str(k): str(v) for k, v in doc["forks"].items()}
        return RoutesView(service, forks, carriers_from_json(doc["carriers"]), str(doc["version"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


class RoutesWatcher:
    """Keeps `view` (which keys fork `service`) current; see the module docstring."""

    def __init__(
        self,
        service: str,
        client: AsyncClient,
        *,
        cache_file: Path | str | None = None,
        watch_timeout: float = 300.0,
        backoff: tuple[float, float] = (0.1, 5.0),
        rng: random.Random | None = None,
        on_change: Callable[[RoutesView], None] | None = None,
    ) -> None:
        self.service = service
        self._client = client
        self._cache = Path(cache_file) if cache_file is not None else None
        self._watch_timeout = watch_timeout
        self._backoff = backoff
        self._rng = rng or random.Random()
        self._on_change = on_change
        self._view = RoutesView(service, {}, DEFAULT_CARRIERS, "")
        self._task: asyncio.Task[None] | None = None
        self._answered = asyncio.Event()
        self.connected = False
        self.last_error: str | None = None  # the last failure to reach the view, for status
        self.source = "none"  # "none" | "cache" | "control plane"
        if self._cache is not None:
            cached = load_view(self._cache, service)
            if cached is not None:
                self._view, self.source = cached, "cache"

    @property
    def view(self) -> RoutesView:
        return self._view

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"forklane-routes-{self.service}")

    async def wait_answered(self, timeout: float = 10.0) -> bool:  # noqa: ASYNC109
        """True once the control plane answered at least once (False after `timeout`)."""
        try:
            async with asyncio.timeout(timeout):
                await self._answered.wait()
        except TimeoutError:
            return False
        return True

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _replace(self, view: RoutesView) -> None:
        changed = (view.forks, view.carriers) != (self._view.forks, self._view.carriers)
        self._view = view
        if changed or self.source != "control plane":
            self.source = "control plane"
            if self._cache is not None:
                try:
                    save_view(self._cache, view)
                except OSError as exc:
                    log.warning("routes: cannot write the cache %s: %s", self._cache, exc)
            if self._on_change is not None:
                self._on_change(view)

    def _selector(self) -> str | None:
        return f"service={self.service}" if len(self.service) <= _LABEL_VALUE_MAX else None

    async def _list(self) -> None:
        params = {"labelSelector": s} if (s := self._selector()) else None
        doc = await self._client.call("GET", "/api/v1/routes", params=params)
        self._replace(view_from_list(self.service, doc))
        self.connected, self.last_error = True, None
        self._answered.set()

    async def _watch(self) -> None:
        """Follow changes from the view's version until the stream ends or fails."""
        forks = dict(self._view.forks)
        async for event in self._client.watch("routes", resource_version=self._view.version,
                                              selector=self._selector(),
                                              timeout=self._watch_timeout):  # fmt: skip
            version = event.resource_version or self._view.version
            spec = event.object.get("spec")
            if isinstance(spec, dict) and spec.get("service") == self.service:
                key = str(spec.get("routingKey"))
                if event.type == "DELETED":
                    forks.pop(key, None)
                elif event.type in ("ADDED", "MODIFIED"):
                    forks[key] = str(spec.get("sandbox"))
            self._replace(RoutesView(self.service, dict(forks), self._view.carriers, version))

    async def _run(self) -> None:
        delay = self._backoff[0]
        must_list = True
        while True:
            try:
                if must_list:
                    await self._list()
                    must_list = False
                await self._watch()
                delay = self._backoff[0]
                must_list = True  # a stream that ended (timeout, server restart): list again
            except Expired:
                must_list = True
            except (ForklaneError, ValueError, KeyError, TypeError) as exc:
                text = f"{type(exc).__name__}: {exc}"
                if text != self.last_error:  # once per distinct problem, not per retry
                    log.warning("routes for %s: %s; consuming with the last view (version %s,"
                                " from %s)", self.service, text, self._view.version or "none",
                                self.source)  # fmt: skip
                self.last_error = text
                self.connected = False
                must_list = True
                await asyncio.sleep(self._rng.uniform(0, delay))  # backoff, not synchronisation
                delay = min(self._backoff[1], delay * 2)
