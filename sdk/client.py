"""`Client` and `AsyncClient`: the public face of the forklane REST API.

Both are thin shells over the one implementation in `sdk._core` (each method builds an
operation there and hands it to a driver in `sdk._transport`), so they cannot drift apart.

    with Client() as client:                      # URL/token from args, env or config file
        with client.sandbox(forks=["pricing=10.0.0.7:8080"], ttl="1h") as sb:
            requests.get(url, headers=sb.headers)  # deleted on exit, even on error

Invariants:
- configuration is resolved once, at construction (`sdk.config`);
- every failure is a `forklane.errors.ForklaneError`;
- `sandbox(...)` deletes what it created on every exit path once creation succeeded
  (an already-gone sandbox is not an error).
"""

from __future__ import annotations

import builtins
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import timedelta
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Generic

import httpx

from forklane._core import (
    ROUTEGROUPS,
    SANDBOXES,
    SERVICES,
    SPLITS,
    Api,
    Kind,
    Op,
    R,
    RetryPolicy,
    SandboxHandle,
    T,
    build_sandbox,
    handle_for,
)
from forklane._transport import run_async, run_sync
from forklane.config import ClientConfig, resolve_config
from forklane.controlplane.wire import (
    ForkSpec,
    ProxyInfo,
    RouteGroup,
    Sandbox,
    SandboxSpec,
    ServiceResource,
    Split,
)
from forklane.errors import NotFound

__all__ = [
    "AsyncClient",
    "AsyncResource",
    "AsyncSandboxes",
    "Client",
    "Resource",
    "RetryPolicy",
    "SandboxHandle",
    "Sandboxes",
]

DEFAULT_SANDBOX_TTL = "1h"

Forks = Sequence[ForkSpec | Mapping[str, Any] | str]
Duration = str | float | timedelta


def _user_agent() -> str:
    try:
        return f"forklane-sdk/{version('forklane')}"
    except PackageNotFoundError:
        return "forklane-sdk"


def _prepare(
    url: str | None,
    token: str | None,
    context: str | None,
    config: ClientConfig | None,
) -> tuple[ClientConfig, dict[str, str]]:
    cfg = config or resolve_config(url=url, token=token, context=context)
    headers = {"user-agent": _user_agent(), "accept": "application/json"}
    if cfg.token:
        headers["authorization"] = f"Bearer {cfg.token}"
    return cfg, headers


# --- sync ----------------------------------------------------------------------------------------


class Resource(Generic[R]):
    """CRUD on one collection (`client.routegroups`, `client.splits`, `client.services`)."""

    def __init__(self, client: Client, kind: Kind[R]) -> None:
        self._client = client
        self._kind: Kind[R] = kind

    @property
    def kind(self) -> Kind[R]:
        return self._kind

    def create(self, obj: R) -> R:
        return self._client._run(self._client._api.create(self._kind, obj))

    def get(self, name: str) -> R:
        return self._client._run(self._client._api.get(self._kind, name))

    def list(self, labels: Mapping[str, str] | None = None) -> builtins.list[R]:
        return self._client._run(self._client._api.list(self._kind, labels))

    def update(self, obj: R) -> R:
        """Replace; raises `Conflict` if `obj.metadata.resourceVersion` is stale."""
        return self._client._run(self._client._api.update(self._kind, obj))

    def apply(self, obj: R) -> R:
        """Create, or replace the existing one's spec and labels."""
        return self._client._run(self._client._api.apply(self._kind, obj))

    def delete(self, name: str) -> None:
        self._client._run(self._client._api.delete(self._kind, name))


class Sandboxes(Resource[Sandbox]):
    def wait_ready(
        self, name: str, timeout: float = 60.0, on_poll: Callable[[Sandbox], None] | None = None
    ) -> Sandbox:
        return self._client._run(self._client._api.wait_ready(name, timeout, on_poll))

    def extend(self, name: str, ttl: Duration) -> Sandbox:
        """Make the sandbox expire `ttl` from now."""
        return self._client._run(self._client._api.extend(name, ttl))


class Client:
    """Synchronous client. Use as a context manager or call `close()`."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        context: str | None = None,
        config: ClientConfig | None = None,
        timeout: float = 10.0,
        retry: RetryPolicy = RetryPolicy(),
        rng: random.Random | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.config, headers = _prepare(url, token, context, config)
        self._http = httpx.Client(
            base_url=self.config.url, headers=headers, timeout=timeout, transport=transport
        )
        self._api = Api(self.config.url, retry, rng or random.Random(), time.monotonic)
        self.sandboxes = Sandboxes(self, SANDBOXES)
        self.routegroups: Resource[RouteGroup] = Resource(self, ROUTEGROUPS)
        self.splits: Resource[Split] = Resource(self, SPLITS)
        self.services: Resource[ServiceResource] = Resource(self, SERVICES)

    def _run(self, op: Op[T]) -> T:
        return run_sync(op, self._http)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_ready(self, name: str, timeout: float = 60.0) -> Sandbox:
        """Block until the sandbox is Ready; `WaitTimeout` or `SandboxFailed` otherwise."""
        return self.sandboxes.wait_ready(name, timeout)

    def proxies(self) -> builtins.list[ProxyInfo]:
        """Proxies connected to the control plane, with the snapshot versions they run."""
        return self._run(self._api.proxies())

    def snapshot(self) -> dict[str, Any]:
        """The routing snapshot the control plane currently pushes, as JSON."""
        return self._run(self._api.snapshot())

    @contextmanager
    def sandbox(
        self,
        forks: Forks | None = None,
        *,
        spec: SandboxSpec | Mapping[str, Any] | None = None,
        name: str | None = None,
        ttl: Duration | None = None,
        labels: Mapping[str, str] | None = None,
        routing_key: str | None = None,
        timeout: float = 60.0,
    ) -> Iterator[SandboxHandle]:
        """Create a sandbox, wait until Ready, yield its handle, delete it on exit.

        Without a TTL (argument or spec) it gets one hour: a safety net, so a process killed
        outright leaves no sandbox behind for long.
        """
        wanted = build_sandbox(
            forks,
            spec=spec,
            name=name,
            ttl=ttl,
            labels=labels,
            routing_key=routing_key,
            default_ttl=DEFAULT_SANDBOX_TTL,
        )
        created = self.sandboxes.create(wanted)
        try:
            ready = self.sandboxes.wait_ready(created.metadata.name, timeout)
            yield handle_for(ready)
        finally:
            try:
                self.sandboxes.delete(created.metadata.name)
            except NotFound:
                pass


# --- async ---------------------------------------------------------------------------------------


class AsyncResource(Generic[R]):
    """CRUD on one collection, awaitable."""

    def __init__(self, client: AsyncClient, kind: Kind[R]) -> None:
        self._client = client
        self._kind: Kind[R] = kind

    @property
    def kind(self) -> Kind[R]:
        return self._kind

    async def create(self, obj: R) -> R:
        return await self._client._run(self._client._api.create(self._kind, obj))

    async def get(self, name: str) -> R:
        return await self._client._run(self._client._api.get(self._kind, name))

    async def list(self, labels: Mapping[str, str] | None = None) -> builtins.list[R]:
        return await self._client._run(self._client._api.list(self._kind, labels))

    async def update(self, obj: R) -> R:
        """Replace; raises `Conflict` if `obj.metadata.resourceVersion` is stale."""
        return await self._client._run(self._client._api.update(self._kind, obj))

    async def apply(self, obj: R) -> R:
        """Create, or replace the existing one's spec and labels."""
        return await self._client._run(self._client._api.apply(self._kind, obj))

    async def delete(self, name: str) -> None:
        await self._client._run(self._client._api.delete(self._kind, name))


class AsyncSandboxes(AsyncResource[Sandbox]):
    async def wait_ready(
        self,
        name: str,
        timeout: float = 60.0,  # noqa: ASYNC109 - the error must name the last phase seen
        on_poll: Callable[[Sandbox], None] | None = None,
    ) -> Sandbox:
        return await self._client._run(self._client._api.wait_ready(name, timeout, on_poll))

    async def extend(self, name: str, ttl: Duration) -> Sandbox:
        """Make the sandbox expire `ttl` from now."""
        return await self._client._run(self._client._api.extend(name, ttl))


class AsyncClient:
    """Asynchronous client. Use with `async with` or call `aclose()`."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        context: str | None = None,
        config: ClientConfig | None = None,
        timeout: float = 10.0,
        retry: RetryPolicy = RetryPolicy(),
        rng: random.Random | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config, headers = _prepare(url, token, context, config)
        self._http = httpx.AsyncClient(
            base_url=self.config.url, headers=headers, timeout=timeout, transport=transport
        )
        self._api = Api(self.config.url, retry, rng or random.Random(), time.monotonic)
        self.sandboxes = AsyncSandboxes(self, SANDBOXES)
        self.routegroups: AsyncResource[RouteGroup] = AsyncResource(self, ROUTEGROUPS)
        self.splits: AsyncResource[Split] = AsyncResource(self, SPLITS)
        self.services: AsyncResource[ServiceResource] = AsyncResource(self, SERVICES)

    async def _run(self, op: Op[T]) -> T:
        return await run_async(op, self._http)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def wait_ready(self, name: str, timeout: float = 60.0) -> Sandbox:  # noqa: ASYNC109
        """Wait until the sandbox is Ready; `WaitTimeout` or `SandboxFailed` otherwise."""
        return await self.sandboxes.wait_ready(name, timeout)

    async def proxies(self) -> builtins.list[ProxyInfo]:
        """Proxies connected to the control plane, with the snapshot versions they run."""
        return await self._run(self._api.proxies())

    async def snapshot(self) -> dict[str, Any]:
        """The routing snapshot the control plane currently pushes, as JSON."""
        return await self._run(self._api.snapshot())

    @asynccontextmanager
    async def sandbox(
        self,
        forks: Forks | None = None,
        *,
        spec: SandboxSpec | Mapping[str, Any] | None = None,
        name: str | None = None,
        ttl: Duration | None = None,
        labels: Mapping[str, str] | None = None,
        routing_key: str | None = None,
        timeout: float = 60.0,  # noqa: ASYNC109 - bounds the wait for Ready only
    ) -> AsyncIterator[SandboxHandle]:
        """Create a sandbox, wait until Ready, yield its handle, delete it on exit."""
        wanted = build_sandbox(
            forks,
            spec=spec,
            name=name,
            ttl=ttl,
            labels=labels,
            routing_key=routing_key,
            default_ttl=DEFAULT_SANDBOX_TTL,
        )
        created = await self.sandboxes.create(wanted)
        try:
            ready = await self.sandboxes.wait_ready(created.metadata.name, timeout)
            yield handle_for(ready)
        finally:
            try:
                await self.sandboxes.delete(created.metadata.name)
            except NotFound:
                pass
