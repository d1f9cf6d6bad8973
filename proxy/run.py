"""Process wiring: load routing, open listeners, reload, drain on SIGTERM.

One `serve()` per worker process. Startup order: the first routing table is loaded (file,
or persisted snapshot + control plane) before the listeners open, so a request never meets
an empty table when one could have been known. Shutdown (SIGTERM/SIGINT): readiness fails at
once; listeners keep accepting for `drain_accept_seconds` (endpoint removal races SIGTERM in
Kubernetes), then stop accepting; idle connections close, busy ones finish with
`Connection: close`; the process exits 0 when idle or at the drain deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import signal
import ssl
import sys
from collections.abc import Callable
from functools import partial
from typing import Any, cast

from forklane.proxy.admin import AdminServer
from forklane.proxy.balancer import Balancer
from forklane.proxy.health import HealthBook
from forklane.proxy.hooks import PropagationState
from forklane.proxy.http1.server import Downstream
from forklane.proxy.http1.upstream import Pools
from forklane.proxy.listener.context import Clock, ListenerContext
from forklane.proxy.listener.overload import Overload, cgroup_memory_limit, gated
from forklane.proxy.listener.sniff import CapturePolicy, Sniffer
from forklane.proxy.loader import FileWatcher, load_snapshot_file
from forklane.proxy.memory import MemoryReturn, release_free_memory
from forklane.proxy.metrics import Stats
from forklane.proxy.prober import Prober
from forklane.proxy.routing import ListenerKind
from forklane.proxy.settings import ProxySettings, UsageError
from forklane.proxy.sockets import global_ipv6_present
from forklane.proxy.state import TableHolder
from forklane.proxy.table import (
    ConfigError,
    LocalIdentity,
    Route,
    RoutingTable,
    destination_names,
)

__all__ = ["http2_handoff", "serve"]

log = logging.getLogger("forklane.proxy")


class Proxy:
    def __init__(self, settings: ProxySettings, hot_path: str = "interpreted") -> None:
        self.settings = settings
        self.hot_path = hot_path
        self.loop = asyncio.get_running_loop()
        rng = random.Random(settings.seed)
        self.draw: Callable[[], float] = rng.random
        local = None
        if settings.service and settings.local_app:
            local = LocalIdentity(service=settings.service, app=settings.local_app)
        self.holder = TableHolder(local, settings.namespace or "", edge=settings.edge)
        self.stats = Stats()
        self.stats.reload_failures = lambda: self.holder.reload_failures
        self.holder.on_swap(self._swapped)
        self.clock = Clock(self.loop.time)  # one clock for every listener and upstream
        self.pools = Pools(self.loop, settings.max_idle_per_endpoint, self.clock)
        self.balancer = Balancer(
            self.loop.time,
            self.draw,
            failure_threshold=settings.outlier_consecutive_failures,
            ejection_seconds=settings.outlier_ejection_seconds,
            probes=HealthBook(),
        )
        self.prober = Prober(self.balancer.probes, self.loop, self.draw)
        self.stats.upstream_health = self.balancer.report
        watermark = settings.memory_watermark_mb
        if watermark is None:
            limit = cgroup_memory_limit()
            watermark_bytes = int(limit * 0.9) if limit else 0
        else:
            watermark_bytes = watermark * 1024 * 1024
        self.overload = Overload(self.stats, settings.max_connections, watermark_bytes)
        self.stats.memory_over = lambda: int(self.overload.over_memory)
        self.memory_return = MemoryReturn()
        self.propagation = PropagationState(settings, self.stats)
        self.contexts: list[ListenerContext] = []
        self.policies: list[CapturePolicy] = []
        self.servers: list[asyncio.Server] = []
        self.admin: AdminServer | None = None
        self.draining = False
        self.stopping = asyncio.Event()
        self.idle = asyncio.Event()  # set when draining and the last connection closed
        self.watcher: FileWatcher | None = None
        self.subscriber: Any = None
        self.tasks: list[asyncio.Task[None]] = []
        self.tls = _tls_context(settings)
        ipv6 = (settings.capture or settings.outbound_bind is not None) and global_ipv6_present()
        self.hosts = settings.listen_hosts(settings.capture and ipv6)
        self.outbound_hosts = settings.outbound_hosts(ipv6)
        self.wake = asyncio.Event()  # set when a listener that was idle gets a connection

    def _swapped(self, table: RoutingTable) -> None:
        self.stats.config_version = table.version
        self.stats.config_reloads += 1
        self.balancer.forget_circuits(destination_names(table))
        self.prober.update(table)
        log.info("routing table %s installed from %s", table.version, self.holder.source)

    # -- routing sources ---------------------------------------------------------------------

    def reload_file(self) -> bool:
        path = self.settings.config
        assert path is not None
        try:
            snapshot = load_snapshot_file(path)
            self.holder.apply(snapshot, source=f"file:{path}")
        except ConfigError as exc:
            if self.holder.last_error != str(exc):
                self.holder.reject(str(exc))
            log.error("routing config rejected, still serving %s: %s",
                      self.holder.table.version if self.holder.table else "nothing", exc)
            return False
        return True

    async def start_routing(self) -> None:
        s = self.settings
        if s.config is not None:
            if not self.reload_file():
                raise UsageError(f"forklane proxy: {self.holder.last_error}")
            self.watcher = FileWatcher(s.config, self.reload_file)
        elif s.controlplane is not None:
            from forklane.proxy.subscriber import Subscriber

            listeners = [k for k, port in (("outbound", s.outbound_port),
                                           ("inbound", s.inbound_port)) if port is not None]
            self.subscriber = Subscriber(
                s.controlplane,
                self.holder,
                node_id=s.node_id or f"{s.service or 'proxy'}-{id(self):x}",
                service=s.service,
                listeners=listeners,
                token=s.controlplane_token,
                token_file=s.controlplane_token_file,
                state_dir=s.state_dir,
                keepalive=s.controlplane_keepalive,
                version=_version(),
                taps=self.stats.taps,
                seen_keys=self.stats.seen_keys,
                activity_interval=s.activity_interval,
            )
            # Serve the persisted snapshot before the listeners open (a cold start during an
            # outage); run() would do it too, but only once its task gets to run.
            self.subscriber.restore()
            self.stats.controlplane_connected = lambda: int(self.subscriber.connected)
            self.tasks.append(self.loop.create_task(self.subscriber.run()))
        else:
            raise UsageError("forklane proxy: give --config FILE or --controlplane ADDR")

    # -- listeners ---------------------------------------------------------------------------

    async def open_listener(self, kind: ListenerKind, port: int) -> int:
        ctx = ListenerContext(
            kind, self.holder, self.settings, self.stats, self.pools, self.balancer,
            self.draw, self.loop, self.clock,
        )
        ctx.hooks = self.propagation.hooks_for(kind)
        ctx.overload = self.overload
        # Downstream is an asyncio protocol by its methods, not by subclassing (the compiled
        # build makes it an extension type).
        factory = cast(Callable[[], asyncio.BaseProtocol], partial(Downstream, ctx))
        if self.settings.capture:
            # Captured connections: detect, then route (HTTP) or relay untouched; the rest of
            # the listener is unchanged (see forklane.proxy.listener).
            policy = CapturePolicy.for_listener(kind, ctx, partial(Downstream, ctx))
            self.policies.append(policy)
            factory = partial(Sniffer, ctx, policy)
        ctx.open_h2 = http2_handoff(ctx)
        ctx.on_busy = self.wake.set
        server = await self.loop.create_server(
            gated(factory, ctx, self.overload, self.settings.listener_max_connections),
            self.outbound_hosts if kind == "outbound" else self.hosts,
            port,
            ssl=self.tls,
            reuse_port=self.settings.workers > 1 or None,
            backlog=2048,
        )
        ctx.on_idle = self._maybe_idle
        self.contexts.append(ctx)
        self.servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    def _maybe_idle(self) -> None:
        if self.draining and not any(ctx.connections for ctx in self.contexts):
            self.idle.set()

    def is_ready(self) -> bool:
        return self.holder.table is not None and not self.draining

    async def start(self) -> str:
        s = self.settings
        await self.start_routing()
        bound: list[str] = []
        host = self.hosts[0]
        if s.outbound_port is not None:
            port = await self.open_listener("outbound", s.outbound_port)
            bound.append(f"outbound={self.outbound_hosts[0]}:{port}")
        if s.inbound_port is not None:
            if self.holder.local is None:
                raise UsageError("forklane proxy: the inbound listener needs --service and --local-app")
            bound.append(f"inbound={host}:{await self.open_listener('inbound', s.inbound_port)}")
        if s.admin_port is not None:
            self.admin = AdminServer(self.holder, self.stats, self.draw, self.is_ready,
                                     hot_path=self.hot_path)
            port = await self.admin.start(host, s.admin_port, reuse_port=s.workers > 1)
            bound.append(f"admin={host}:{port}")
        self.tasks.append(self.loop.create_task(self._housekeeping()))
        return " ".join(bound)

    async def _housekeeping(self) -> None:
        """Deadlines (a tenth of a second resolution) while a listener has connections or
        copies in flight; idle upstream connections once a second while there are any; the
        config file every `reload_poll_seconds`. With nothing of that to watch the loop
        sleeps until a connection arrives or the next file poll is due: an idle sidecar
        wakes about once a second, not ten times."""
        settings = self.settings
        clock = self.clock
        poll = settings.reload_poll_seconds
        now = clock.tick()
        next_pools = now + 1.0
        next_poll = now + poll
        while True:
            if any(ctx.busy for ctx in self.contexts):
                await asyncio.sleep(0.1)
            else:
                self._return_memory(clock.tick(), idle=True)
                self.wake.clear()
                wait = next_poll - clock.tick() if self.watcher is not None else 3600.0
                if self.pools.idle_count():
                    wait = min(wait, next_pools - clock.now)
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wake.wait(), timeout=wait)
            now = clock.tick()
            if self.overload.check_memory():
                log.warning("resident memory above the watermark (%d MiB): shedding load",
                            self.overload.watermark >> 20)
                self.pools.close_all()  # idle upstream connections give their buffers back
                release_free_memory()
            self._return_memory(now, idle=False)
            for ctx in self.contexts:
                if ctx.busy:
                    ctx.sweep()
            if now >= next_pools:
                next_pools = now + 1.0
                self.pools.sweep(settings.idle_timeout)
            if now >= next_poll:
                next_poll = now + poll
                if self.watcher is not None:
                    self.watcher.poll()

    def _return_memory(self, now: float, idle: bool) -> None:
        peak = self.memory_return.peak
        if self.memory_return.observe(self.stats.connections_open, now, idle):
            log.info("connections fell from %d to %d: free memory handed back", peak,
                     self.stats.connections_open)

    # -- shutdown ----------------------------------------------------------------------------

    async def drain(self) -> None:
        s = self.settings
        self.draining = True
        if s.drain_accept_seconds:
            await asyncio.sleep(s.drain_accept_seconds)
        for server in self.servers:
            server.close()
        for ctx in self.contexts:
            ctx.draining = True
            for conn in tuple(ctx.connections):
                conn.drain()
        deadline = self.loop.time() + s.drain_seconds
        if any(ctx.connections for ctx in self.contexts):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle.wait(), timeout=s.drain_seconds)
        # Mirror copies in flight finish too (within the same deadline): they have no idle
        # callback, and there are few, so their sets are polled.
        copies = [ctx.watched for ctx in self.contexts]
        while any(copies) and self.loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for ctx in self.contexts:
            for conn in tuple(ctx.connections):
                conn.close()
            for task in tuple(ctx.tasks):
                task.cancel()
        self.pools.close_all()
        for ctx in self.contexts:
            ctx.close_h2()

    async def aclose(self) -> None:
        for task in self.tasks:
            task.cancel()
        await self.prober.aclose()
        if self.subscriber is not None:
            await self.subscriber.aclose()
        if self.admin is not None:
            await self.admin.aclose()
        for server in self.servers:
            server.close()
        for policy in self.policies:
            if policy.diag is not None:
                policy.diag.close()
        if self.propagation.tracer is not None:
            # Exporting the last batch blocks on HTTP: keep it off the event loop.
            await self.loop.run_in_executor(None, self.propagation.shutdown)


def _version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("forklane")
    except PackageNotFoundError:
        return None


def http2_handoff(
    ctx: ListenerContext,
) -> Callable[[asyncio.Transport, bytes, Route | None], None]:
    """The HTTP/1.1 module's way to hand a connection to HTTP/2; the HTTP/2 module (and the
    h2 stack) loads with the first connection that needs it."""

    def open_h2(transport: asyncio.Transport, data: bytes, passthrough: Route | None) -> None:
        from forklane.proxy.http2.server import take_over

        take_over(ctx, transport, data, passthrough)

    return open_h2


def _tls_context(settings: ProxySettings) -> ssl.SSLContext | None:
    """TLS for both listeners when a certificate is configured; ALPN picks h2 or HTTP/1.1."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"forklane proxy: cannot load the TLS certificate: {exc}") from None
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


async def serve(settings: ProxySettings, hot_path: str, ready_line: bool = True) -> int:
    proxy = Proxy(settings, hot_path)
    loop = proxy.loop
    bound = await proxy.start()
    # Everything alive now (modules, settings, the first table) lives as long as the process:
    # out of the collector's sight, a full collection scans only what requests allocate
    # instead of the whole heap (tens of ms on a loaded machine, the HTTP/2 p99 before this).
    gc.freeze()
    if ready_line:
        print(f"forklane proxy listening: {bound} (routing {proxy.holder.source}, "
              f"version {proxy.holder.table.version if proxy.holder.table else '-'}, "
              f"hot path {hot_path})", flush=True)

    def on_hup() -> None:
        if settings.config is not None:
            proxy.reload_file()

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    loop.add_signal_handler(signal.SIGTERM, proxy.stopping.set)
    loop.add_signal_handler(signal.SIGINT, proxy.stopping.set)
    await proxy.stopping.wait()
    log.info("draining")
    await proxy.drain()
    await proxy.aclose()
    return 0


def run(settings: ProxySettings, hot_path: str) -> int:
    """Serve until SIGTERM. `hot_path` is the mode `hotpath.select` chose (reported in the
    start-up line and `/config`)."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported OS
        return asyncio.run(serve(settings, hot_path))
    return uvloop.run(serve(settings, hot_path))
