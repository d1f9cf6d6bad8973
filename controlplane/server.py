"""One control-plane replica: store, reconciler, REST API and push server, started together.

Start order: open the store (migrations run), make sure an admin can log in, run the first
reconcile pass (so a snapshot exists before any proxy subscribes), then bind the API and
the push server. `aclose()` undoes it in reverse. Nothing here reads the environment: it
takes a frozen `Settings`.
"""

from __future__ import annotations

import builtins
import sys
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol, TextIO

from aiohttp import web

from forklane.controlplane import wire
from forklane.controlplane.activity import ActivityLog
from forklane.controlplane.api import ApiContext, build_app
from forklane.controlplane.auth import Authenticator, Grant, new_token
from forklane.controlplane.events import EventRecorder, condition_events, proxy_event
from forklane.controlplane.publisher import SnapshotPublisher
from forklane.controlplane.ratelimit import RateLimiter
from forklane.controlplane.reconciler import Clock, Probe, Reconciler, tcp_probe, utcnow
from forklane.controlplane.settings import Settings, parse_hostport
from forklane.controlplane.store import make_store
from forklane.controlplane.store.base import Store
from forklane.controlplane.tap import TapHub
from forklane.controlplane.tap_relay import TapRelay, relay_for
from forklane.controlplane.tunnel.endpoint import TunnelRegistry
from forklane.controlplane.webhooks.sender import WebhookSender

__all__ = ["ControlPlane", "NoProxies", "ProxyView"]


class ProxyView(Protocol):
    """What the API and the reconciler need of the proxy registry."""

    def list(self) -> list[wire.ProxyInfo]: ...

    def events(self) -> builtins.list[wire.Event]: ...

    def all_acked(self, version: int) -> bool: ...


class NoProxies:
    """A registry with no proxy connected: every version counts as ACKed.

    Used when the push server is not run (API-only tests and tools).
    """

    def list(self) -> list[wire.ProxyInfo]:
        return []

    def events(self) -> builtins.list[wire.Event]:
        return []

    def all_acked(self, version: int) -> bool:
        return True


class ControlPlane:
    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        with_push: bool = True,
        clock: Clock = utcnow,
        probe: Probe = tcp_probe,
        stderr: TextIO | None = None,
    ) -> None:
        self.settings = settings
        self.store = store or make_store(
            settings.store, data_dir=settings.data_dir, history=settings.watch_history
        )
        self.publisher = SnapshotPublisher()
        self._with_push = with_push
        self._clock = clock
        self._probe = probe
        self._stderr = stderr or sys.stderr
        self.events = EventRecorder(self.store)
        self.registry: ProxyView = NoProxies()
        self.push: Any = None
        self.taps = TapHub(redact=settings.tap_redact_list())
        self.tap_relay: TapRelay | None = None  # replicas share taps (PostgreSQL only)
        self.webhooks: WebhookSender | None = None
        if settings.notify_url_list():
            self.webhooks = WebhookSender(
                self.store, settings.notify_url_list(), settings.notify_secret, clock,
                max_attempts=settings.notify_max_attempts,
            )
        self.activity = ActivityLog(clock)
        self.tunnels = TunnelRegistry(
            self.store, self.publisher, clock, bind_host=settings.tunnel_host,
            advertise=settings.tunnel_advertised(), grace=settings.tunnel_grace,
            replica=settings.replica,
        )
        if with_push:
            from forklane.controlplane.push.registry import ProxyRegistry
            from forklane.controlplane.push.server import PushServer

            registry = ProxyRegistry(
                replica=settings.replica,
                sink=lambda event: self.events.record((proxy_event(event),)),
            )
            self.registry = registry
            self.push = PushServer(
                self.publisher, registry, authorize=self._authorize_push,
                min_ping_interval=settings.grpc_min_ping_interval,
                keepalive=settings.grpc_keepalive,
                recheck_interval=settings.token_recheck_interval,
                taps=self.taps,
                on_activity=self.activity.saw,
            )
        self.reconciler = Reconciler(
            self.store, self.publisher, self.registry, clock=clock, probe=probe,
            probe_timeout=settings.probe_timeout, interval=settings.reconcile_interval,
            carriers=settings.carrier_list(), signing_secrets=settings.routing_key_secrets,
            on_status=lambda kind, name, before, after, now: self.events.record(
                condition_events(kind, name, before, after, now)
            ),
            activity=self.activity.last,
        )
        if with_push:
            # an ACK may make a sandbox Ready: judge it now (the reconciler wakes only when
            # it does), not at the next interval
            registry.add_listener(self.reconciler.acks_changed)
        self.authenticator: Authenticator | None = None
        self.kube: Any = None  # KubeAdapters when settings.kubernetes (imported lazily)
        self._runner: web.AppRunner | None = None
        self.api_address: tuple[str, int] | None = None
        self.grpc_address: tuple[str, int] | None = None
        self._opened = False
        self._reconciling = False

    async def _authorize_push(self, token: str | None) -> Grant | None:
        """Static tokens (role proxy or admin) may subscribe as anything; a ServiceAccount
        token (TokenReview, audience `token_audience`) only as a service of its namespace."""
        if self.authenticator is None:
            return Grant("anonymous")
        if token is None:
            return None
        principal = await self.authenticator.authenticate(token)
        if principal is not None:
            return Grant(principal.subject) if principal.role in ("proxy", "admin") else None
        if self.kube is not None and self.kube.reviewer is not None:
            account = await self.kube.reviewer.review(token)
            if account is not None:
                return Grant(account.username, namespace=account.namespace)
        return None

    def _fork_routes(self) -> frozenset[str]:
        """Every endpoint a fork route of the published snapshot points at (a fork workload
        is removed only once no route points at its pods)."""
        snap = self.reconciler.published
        if snap is None:
            return frozenset()
        return frozenset(ep for fork in snap.forks for ep in fork.endpoints)

    def _group_members(self) -> dict[str, tuple[str, ...]]:
        """Each route group's members by the group's routing key (the routes view)."""
        compiled = self.reconciler.compiled
        if compiled is None:
            return {}
        keys = compiled.routing_keys
        return {keys[("routegroups", name)]: members
                for name, members in compiled.group_members.items()
                if ("routegroups", name) in keys}  # fmt: skip

    def _key_owners(self) -> Mapping[str, tuple[str | None, str]]:
        compiled = self.reconciler.compiled
        return {} if compiled is None else compiled.key_owners

    async def _bootstrap_admin(self, now: datetime) -> None:
        """First start without FORKLANE_ADMIN_TOKEN: make one admin token, print it once."""
        if self.settings.admin_token is not None or await self.store.count_tokens("admin"):
            return
        raw, record = new_token("admin", "admin", created_by="bootstrap", now=now)
        await self.store.add_token(record)
        print(
            f"forklane: bootstrap admin token (shown once, stored hashed): {raw}",
            file=self._stderr, flush=True,
        )

    async def start(self) -> None:
        """Open, reconcile once, bind. On failure everything started is closed again."""
        try:
            await self.store.open()
            self._opened = True
            self.tap_relay = relay_for(self.store, self.taps)
            if self.tap_relay is not None:
                await self.tap_relay.start()
            self.events.start()
            if self.settings.auth:
                self.authenticator = Authenticator(
                    self.store, bootstrap_token=self.settings.admin_token
                )
            await self.tunnels.forget_own()
            self.tunnels.start()
            await self.reconciler.run_once()
            await self.reconciler.start()
            self._reconciling = True
            if self.webhooks is not None:
                await self.webhooks.start()
            app = build_app(
                ApiContext(
                    store=self.store, publisher=self.publisher, proxies=self.registry,
                    authenticator=self.authenticator, clock=self._clock,
                    default_ttl_seconds=self.settings.default_ttl_seconds(),
                    probe=self._probe, probe_timeout=self.settings.probe_timeout,
                    bookmark_interval=self.settings.watch_bookmark_interval,
                    replica=self.settings.replica, group_members=self._group_members,
                    key_owners=self._key_owners,
                    limiter=RateLimiter(self.settings.api_rate_limit,
                                        self.settings.api_rate_burst),
                    taps=self.taps,
                    webhooks=self.webhooks,
                    tunnels=self.tunnels,
                )
            )
            self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await self._runner.setup()
            host, port = parse_hostport(self.settings.listen)
            site = web.TCPSite(self._runner, host, port)
            await site.start()
            bound = self._runner.addresses[0]
            self.api_address = (host, int(bound[1]))
            if self.push is not None:
                ghost, _ = parse_hostport(self.settings.grpc)
                gport = await self.push.start(self.settings.grpc)
                self.grpc_address = (ghost, int(gport))
            if self.settings.auth:
                # only once both addresses are ours: a start that fails never prints (and
                # loses) a token
                await self._bootstrap_admin(self._clock())
            if self.settings.kubernetes:
                from forklane.controlplane.kubernetes.adapters import KubeAdapters

                self.kube = KubeAdapters(self.settings, self.store, routed=self._fork_routes)
                await self.kube.start()
        except BaseException:
            await self.aclose()
            raise

    def banner(self) -> str:
        """The one line tests and the demo parse once both servers are bound."""
        assert self.api_address is not None
        host, port = self.api_address
        grpc = "off" if self.grpc_address is None else _join(*self.grpc_address)
        return (
            f"forklane controlplane listening on http://{_join(host, port)} "
            f"(grpc {grpc}, store {self.settings.store_label()})"
        )

    async def aclose(self) -> None:
        if self.kube is not None:
            kube, self.kube = self.kube, None
            await kube.aclose()
        if self.push is not None and self.grpc_address is not None:
            await self.push.aclose()
            self.grpc_address = None
        if self._opened:
            await self.tunnels.aclose()  # before the API: a tunnel's WebSocket holds it open
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        if self._reconciling:
            self._reconciling = False
            await self.reconciler.aclose()
            if self.webhooks is not None:
                await self.webhooks.aclose()
        if self.tap_relay is not None:
            relay, self.tap_relay = self.tap_relay, None
            await relay.aclose()
        if self._opened:
            self._opened = False
            await self.events.aclose()
            await self.store.aclose()


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
