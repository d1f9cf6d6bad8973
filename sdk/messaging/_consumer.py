"""The part every broker's consumer shares: judge a message, run the handler in its context,
report. Broker modules only move bytes and acknowledgements.

Invariants: the handler runs with the message's routing context current (so its own HTTP and
gRPC calls carry the key); a verdict is reported once per message judged; a reporter that
raises is logged and never stops consumption.
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
                 reporters: Iterable[Reporter] = ()) -> None:  # fmt: skip
        self.runs_as = runs_as
        self.routes = routes
        self.broker = broker
        self.reporters = tuple(reporters)

    def judge(self, headers: Mapping[str, str], extra_hops: int = 0) -> Verdict:
        """The verdict for a message with `headers` (lowercase names)."""
        return decide(self.routes.view, self.runs_as, headers, hops_of(headers) + extra_hops)

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
