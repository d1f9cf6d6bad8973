"""The part every broker's consumer shares: judge a message, run the handler in its context,
report. Broker modules only move bytes and acknowledgements.

Invariants: the handler runs with the message's routing context current (so its own HTTP and
gRPC calls carry the key); a verdict is reported once per message judged; a reporter that
raises is logged and never stops consumption.

Grace (take-or-skip brokers only, where every side reads every message and nobody can hand a
message on): a fork's consumer keeps taking messages with a key its sandbox owned for `grace`
seconds after the key left its view. The baseline skipped those while its own view still had
the key, so without grace they would be skipped twice, i.e. lost; with it, a message may be
taken twice instead, which at-least-once allows and the `grace` reason makes visible.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

from forklane.messaging.carriers import normalise_headers
from forklane.messaging.headers import HOPS_HEADER, context_for_message
from forklane.messaging.report import Delivery, Outcome, Reporter
from forklane.messaging.rule import RoutesView, RunsAs, Verdict, decide
from forklane.propagation import routing_context

__all__ = ["Judge", "StaticRoutes", "ViewSource", "hops_of"]

log = logging.getLogger("forklane.messaging")
M = TypeVar("M")


class ViewSource(Protocol):
    """Anything with a current `view` (a `RoutesWatcher`, or `StaticRoutes`)."""

    @property
    def view(self) -> RoutesView: ...


@dataclass(frozen=True, slots=True)
class StaticRoutes:
    """A fixed view (tests, or a service that is told its routes another way)."""

    view: RoutesView


def hops_of(headers: Mapping[str, str]) -> int:
    """How often the message was handed on already (an unreadable count is 0)."""
    text = headers.get(HOPS_HEADER, "0")
    return int(text) if text.isdigit() and len(text) < 4 else 0


class Judge:
    """One consumer's identity, view source and reporters."""

    def __init__(self, runs_as: RunsAs, routes: ViewSource, broker: str,
                 reporters: Iterable[Reporter] = (), *, grace: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.runs_as = runs_as
        self.routes = routes
        self.broker = broker
        self.reporters = tuple(reporters)
        self._grace = grace
        self._clock = clock
        self._seen_view: RoutesView | None = None
        self._mine: set[str] = set()  # keys the current view gives this fork
        self._retired: dict[str, float] = {}  # key -> when it left this fork's view

    def judge(self, headers: Mapping[str, str], extra_hops: int = 0) -> Verdict:
        """The verdict for a message with `headers` (lowercase names)."""
        view = self.routes.view
        verdict = decide(view, self.runs_as, headers, hops_of(headers) + extra_hops)
        if not self._grace or self.runs_as.sandbox is None:
            return verdict
        if view is not self._seen_view:
            self._follow(view)
        key = verdict.reading.key
        if verdict.take or key is None or verdict.owner is not None:
            return verdict
        left = self._retired.get(key)
        if left is None or self._clock() - left > self._grace:
            return verdict
        return Verdict(True, self.runs_as.sandbox, verdict.reading, "grace")

    def _follow(self, view: RoutesView) -> None:
        now = self._clock()
        mine = {k for k, sb in view.forks.items() if sb == self.runs_as.sandbox}
        for key in self._mine - mine:
            self._retired[key] = now
        for key in mine:
            self._retired.pop(key, None)
        for key, at in list(self._retired.items()):
            if now - at > self._grace:
                del self._retired[key]
        self._mine, self._seen_view = mine, view

    def report(self, verdict: Verdict, outcome: Outcome, source: str,
               message_id: str | None = None) -> None:  # fmt: skip
        if not self.reporters:
            return
        delivery = Delivery(
            time.time(), self.broker, source, self.runs_as.service, self.runs_as.side, outcome,
            verdict.owner_side, verdict.reading.key, verdict.reading.carrier, verdict.reason,
            self.routes.view.version, message_id,
        )
        for reporter in self.reporters:
            try:
                reporter(delivery)
            except Exception:
                log.exception("a delivery reporter failed (consumption goes on)")

    @staticmethod
    async def run(handler: Callable[[M], Awaitable[object]], message: M,
                  headers: Mapping[str, str], verdict: Verdict) -> None:  # fmt: skip
        """Run `handler(message)` with the message's routing context current."""
        with routing_context(context_for_message(headers, verdict.reading.key)):
            await handler(message)


def text_headers(pairs: Iterable[tuple[str, object]]) -> dict[str, str]:
    """Broker headers → lowercase text headers (bytes decoded as UTF-8; others left out)."""
    out: list[tuple[str, str]] = []
    for name, value in pairs:
        if isinstance(value, bytes | bytearray):
            try:
                value = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                continue
        if isinstance(value, str):
            out.append((name, value))
        elif isinstance(value, int) and not isinstance(value, bool):
            out.append((name, str(value)))
    return normalise_headers(out)
