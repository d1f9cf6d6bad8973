"""NATS (nats-py): the key in message headers; JetStream per-sandbox durable consumers with
subject filters; core NATS with take-or-skip.

Producers: `publish()` (JetStream) and `publish_core()` add the current routing key to the
message headers, in the same carriers as HTTP.

JetStream consumers (`JetStreamConsumer`): the baseline pulls from the application's stream
with its durable consumer as before. A message it does not own is *handed on* to the routes
stream `FORKLANE_ROUTES` (created when missing; subjects `forklane.route.>`, limits retention,
`max_age` one day by default) under `forklane.route.<service>.<sandbox>`, then acknowledged.
Each fork pulls only its own subject through a durable consumer with that subject filter; a
message it does not own (its sandbox is gone) goes back to `forklane.route.<service>._baseline`,
which the baseline also pulls. Every hand-on carries `Nats-Msg-Id` = source stream, sequence and
hop count, so JetStream's duplicate window drops the copy a crash between publish and ack
would otherwise make. The original subject travels in `x-forklane-subject`.

Core NATS consumers (`NatsCoreConsumer`): core NATS keeps nothing, so there is nowhere to hand a
message on to. Each side subscribes with its own queue group (`<group>` for the baseline,
`<group>.forklane.<sandbox>` for a fork), gets every message, and takes only its own (skips the
rest). At-most-once, as core NATS always is. After a sandbox is deleted its fork keeps taking
its key's messages for `grace` seconds (default 60), so a message the baseline skipped while its
view still had the key is not skipped twice; see the README for the window around a change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

from forklane.messaging._consumer import Judge, ViewSource, hops_of, text_headers
from forklane.messaging.headers import HOPS_HEADER, producer_headers
from forklane.messaging.report import Reporter
from forklane.messaging.rule import RunsAs
from forklane.propagation import RoutingContext

__all__ = [
    "ROUTES_STREAM",
    "JetStreamConsumer",
    "NatsCoreConsumer",
    "ensure_routes_stream",
    "message_headers",
    "publish",
    "publish_core",
    "route_subject",
]

log = logging.getLogger("forklane.messaging.nats")
ROUTES_STREAM = "FORKLANE_ROUTES"
ROUTES_PREFIX = "forklane.route"
ORIGIN_HEADER = "x-forklane-subject"
Handler = Callable[[Msg], Awaitable[object]]


def route_subject(service: str, sandbox: str | None) -> str:
    """Where messages of `service` owned by `sandbox` (None: the baseline) are handed on.

    Service names hold `[a-z0-9.-]`, so writing `.` as `_` keeps them one subject token and
    stays unambiguous; sandbox names are DNS labels and never start with `_`.
    """
    return f"{ROUTES_PREFIX}.{service.replace('.', '_')}.{sandbox or '_baseline'}"


def message_headers(
    headers: Mapping[str, str] | None = None, ctx: RoutingContext | None = None
) -> dict[str, str]:
    """`headers` plus the routing carriers of `ctx` (default: the current context)."""
    own = dict(headers or {})
    return {**own, **producer_headers(ctx, own)}


async def publish(js: JetStreamContext, subject: str, payload: bytes = b"", *,
                  headers: Mapping[str, str] | None = None, **kw: Any) -> api.PubAck:  # fmt: skip
    """JetStream publish carrying the current routing key."""
    return await js.publish(subject, payload, headers=message_headers(headers), **kw)


async def publish_core(nc: NATS, subject: str, payload: bytes = b"", *,
                       headers: Mapping[str, str] | None = None) -> None:  # fmt: skip
    """Core NATS publish carrying the current routing key."""
    await nc.publish(subject, payload, headers=message_headers(headers))


async def ensure_routes_stream(js: JetStreamContext, max_age: float = 86400.0) -> None:
    """Create the routes stream when it does not exist (an existing one is left as it is)."""
    try:
        await js.stream_info(ROUTES_STREAM)
    except NotFoundError:
        await js.add_stream(api.StreamConfig(
            name=ROUTES_STREAM, subjects=[f"{ROUTES_PREFIX}.>"],
            retention=api.RetentionPolicy.LIMITS, storage=api.StorageType.FILE,
            max_age=max_age, duplicate_window=120.0,
        ))  # fmt: skip


class JetStreamConsumer:
    """Pull `subject` of `stream` with `durable` as `runs_as`; see the module docstring."""

    def __init__(
        self, js: JetStreamContext, stream: str, subject: str, durable: str, runs_as: RunsAs,
        routes: ViewSource, handler: Handler, *, reporters: Iterable[Reporter] = (),
        batch: int = 64, fetch_timeout: float = 0.5, requeue_on_error: bool = False,
        routes_max_age: float = 86400.0,
    ) -> None:
        self._js = js
        self.stream = stream
        self.subject = subject
        self.durable = durable
        self.judge = Judge(runs_as, routes, "jetstream", reporters)
        self._handler = handler
        self._batch = batch
        self._fetch_timeout = fetch_timeout
        self._requeue = requeue_on_error
        self._max_age = routes_max_age
        self._tasks: list[asyncio.Task[None]] = []
        self._subs: list[JetStreamContext.PullSubscription] = []

    def _route_durable(self, sandbox: str | None) -> str:
        return f"{self.durable}_forklane_{sandbox or 'baseline'}"

    async def start(self) -> None:
        await ensure_routes_stream(self._js, self._max_age)
        me = self.judge.runs_as
        mine = route_subject(me.service, me.sandbox)
        subs = []
        if me.sandbox is None:
            subs.append(await self._js.pull_subscribe(self.subject, durable=self.durable,
                                                      stream=self.stream))  # fmt: skip
        # a fork's durable that nobody pulls any more (its sandbox is long gone) is removed by
        # the server after the routes stream's max_age, with whatever it still held
        idle = api.ConsumerConfig(inactive_threshold=self._max_age) if me.sandbox else None
        subs.append(await self._js.pull_subscribe(mine, durable=self._route_durable(me.sandbox),
                                                  stream=ROUTES_STREAM, config=idle))  # fmt: skip
        self._subs = subs
        self._tasks = [asyncio.create_task(self._pull(sub)) for sub in subs]

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs = []

    async def _pull(self, sub: JetStreamContext.PullSubscription) -> None:
        while True:
            try:
                messages = await sub.fetch(self._batch, timeout=self._fetch_timeout)
            except NatsTimeout:
                continue
            except Exception as exc:  # a reconnect in progress: try again shortly
                log.warning("jetstream fetch failed (%r); retrying", exc)
                await asyncio.sleep(0.2)  # backoff, not synchronisation
                continue
            for msg in messages:
                await self._on_message(msg)

    async def _on_message(self, msg: Msg) -> None:
        headers = text_headers((msg.headers or {}).items())
        verdict = self.judge.judge(headers)
        source = headers.get(ORIGIN_HEADER, msg.subject)
        meta = msg.metadata
        msg_id = f"{meta.stream}:{meta.sequence.stream}"
        if verdict.take:
            self.judge.report(verdict, "taken", source, msg_id)
            try:
                await Judge.run(self._handler, msg, headers, verdict)
            except Exception:
                log.exception("handler failed for a message on %s", source)
                await (msg.nak() if self._requeue else msg.term())
                return
            await msg.ack()
            return
        hops = hops_of(headers) + 1
        moved = dict(msg.headers or {})
        moved[HOPS_HEADER] = str(hops)
        moved.setdefault(ORIGIN_HEADER, msg.subject)
        moved["Nats-Msg-Id"] = f"{msg_id}:{hops}"
        target = route_subject(self.judge.runs_as.service, verdict.owner)
        await self._js.publish(target, msg.data, headers=moved, stream=ROUTES_STREAM)
        await msg.ack()
        self.judge.report(verdict, "handed-on", source, msg_id)


class NatsCoreConsumer:
    """Subscribe to `subject` as `runs_as` in queue group `group`; take or skip."""

    def __init__(
        self, nc: NATS, subject: str, group: str, runs_as: RunsAs, routes: ViewSource,
        handler: Handler, *, reporters: Iterable[Reporter] = (), grace: float = 60.0,
    ) -> None:
        self._nc = nc
        self.subject = subject
        self.group = group if runs_as.sandbox is None else f"{group}.forklane.{runs_as.sandbox}"
        self.judge = Judge(runs_as, routes, "nats", reporters, grace=grace)
        self._handler = handler
        self._sub: Any = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self.subject, queue=self.group, cb=self._on_message)

    async def aclose(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await sub.unsubscribe()

    async def _on_message(self, msg: Msg) -> None:
        headers = text_headers((msg.headers or {}).items())
        verdict = self.judge.judge(headers)
        if not verdict.take:
            self.judge.report(verdict, "skipped", msg.subject)
            return
        self.judge.report(verdict, "taken", msg.subject)
        try:
            await Judge.run(self._handler, msg, headers, verdict)
        except Exception:
            log.exception("handler failed for a message on %s", msg.subject)
