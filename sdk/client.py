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
import logging
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
    WatchEvent,
    build_sandbox,
    handle_for,
    parse_tap_line,
    parse_watch_line,
    tap_request,
    watch_request,
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
from forklane.errors import NotFound, Unavailable, error_from_response

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

ResourceInput = Mapping[str, Any]  # a plain dict: `{"metadata": {...}, "spec": {...}}`

Forks = Sequence[ForkSpec | Mapping[str, Any] | str]
Duration = str | float | timedelta


def _log_warning(text: str) -> None:
    """The control plane's `Warning` headers (e.g. an unreachable fork) go to logging."""
    logging.getLogger("forklane").warning("%s", text)


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

    def create(self, obj: R | ResourceInput) -> R:
        """Create from a model or a plain dict (`Invalid` with field paths if it is not one)."""
        return self._client._run(self._client._api.create(self._kind, self._kind.coerce(obj)))

    def get(self, name: str) -> R:
        return self._client._run(self._client._api.get(self._kind, name))

    def list(self, labels: Mapping[str, str] | None = None) -> builtins.list[R]:
        return self._client._run(self._client._api.list(self._kind, labels))

    def update(self, obj: R | ResourceInput) -> R:
        """Replace; raises `Conflict` if `obj.metadata.resourceVersion` is stale."""
        return self._client._run(self._client._api.update(self._kind, self._kind.coerce(obj)))

    def apply(self, obj: R | ResourceInput) -> R:
        """Create, or replace the existing one's spec and labels (a no-op when equal)."""
        return self._client._run(self._client._api.apply(self._kind, self._kind.coerce(obj)))

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
        on_warning: Callable[[str], None] | None = None,
    ) -> None:
        self.config, headers = _prepare(url, token, context, config)
        self._http = httpx.Client(
            base_url=self.config.url, headers=headers, timeout=timeout, transport=transport
        )
        self._api = Api(self.config.url, retry, rng or random.Random(), time.monotonic,
                        warn=on_warning or _log_warning)  # fmt: skip
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

    def call(self, method: str, path: str, body: Any = None,
             params: Mapping[str, str] | None = None) -> Any:
        """Any other endpoint of the API as JSON (`whoami`, `tokens`, `version`, `events`),
        with the same retries and error translation as every typed call."""
        return self._run(self._api.call_json(method, path, body, params))

    def watch(
        self,
        kind: str,
        *,
        resource_version: str | None = None,
        selector: str | None = None,
        timeout: float | None = None,
    ) -> Iterator[WatchEvent]:
        """Events of one kind (`"sandboxes"` …) as they happen; see `controlplane.watch`.

        Without `resource_version` it starts with ADDED for what exists. `Expired` when the
        version is older than the history kept: list again and watch from the list's version.
        """
        request = watch_request(kind, resource_version, selector, timeout)
        try:
            with self._http.stream("GET", request.path, params=request.params,
                                   timeout=None) as response:  # fmt: skip
                if response.status_code != 200:
                    raise error_from_response(response.status_code, response.read(), request.what)
                for line in response.iter_lines():
                    if line.strip():
                        yield parse_watch_line(line)
        except httpx.TransportError as exc:
            raise Unavailable(f"watch {kind}: {exc}") from None

    def tap(
        self,
        sandbox: str | None = None,
        *,
        service: str | None = None,
        key: str | None = None,
        status: str | None = None,
        seconds: float | None = None,
        capture_headers: bool = False,
        capture_body: int = 0,
    ) -> Iterator[dict[str, Any]]:
        """Routing decisions (and message deliveries) as proxies make them, filtered where
        they are made; see `controlplane.tap_api` for the lines. `capture_headers` and
        `capture_body` (bytes of each body, at most 16 KiB) add a redacted `capture`."""
        request, what = tap_request(sandbox, service, key, status, seconds, capture_headers,
                                    capture_body)
        try:
            with self._http.stream("GET", request.path, params=request.params,
                                   timeout=None) as response:  # fmt: skip
                if response.status_code != 200:
                    raise error_from_response(response.status_code, response.read(), what)
                for line in response.iter_lines():
                    if line.strip():
                        yield parse_tap_line(line)
        except httpx.TransportError as exc:
            raise Unavailable(f"{what}: {exc}") from None

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

        Without a TTL (argument or spec) it gets the control plane's default (1 h unless
        configured): a safety net, so a process killed outright leaves nothing for long.
        """
        wanted = build_sandbox(
            forks,
            spec=spec,
            name=name,
            ttl=ttl,
            labels=labels,
            routing_key=routing_key,
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

    async def create(self, obj: R | ResourceInput) -> R:
        """Create from a model or a plain dict (`Invalid` with field paths if it is not one)."""
        return await self._client._run(self._client._api.create(self._kind, self._kind.coerce(obj)))

    async def get(self, name: str) -> R:
        return await self._client._run(self._client._api.get(self._kind, name))

    async def list(self, labels: Mapping[str, str] | None = None) -> builtins.list[R]:
        return await self._client._run(self._client._api.list(self._kind, labels))

    async def update(self, obj: R | ResourceInput) -> R:
        """Replace; raises `Conflict` if `obj.metadata.resourceVersion` is stale."""
        return await self._client._run(self._client._api.update(self._kind, self._kind.coerce(obj)))

    async def apply(self, obj: R | ResourceInput) -> R:
        """Create, or replace the existing one's spec and labels (a no-op when equal)."""
        return await self._client._run(self._client._api.apply(self._kind, self._kind.coerce(obj)))

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
        on_warning: Callable[[str], None] | None = None,
    ) -> None:
        self.config, headers = _prepare(url, token, context, config)
        self._http = httpx.AsyncClient(
            base_url=self.config.url, headers=headers, timeout=timeout, transport=transport
        )
        self._api = Api(self.config.url, retry, rng or random.Random(), time.monotonic,
                        warn=on_warning or _log_warning)  # fmt: skip
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

    async def call(self, method: str, path: str, body: Any = None,
                   params: Mapping[str, str] | None = None) -> Any:
        """Any other endpoint of the API as JSON (see `Client.call`)."""
        return await self._run(self._api.call_json(method, path, body, params))

    async def watch(
        self,
        kind: str,
        *,
        resource_version: str | None = None,
        selector: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the server ends the stream
    ) -> AsyncIterator[WatchEvent]:
        """Events of one kind as they happen (see `Client.watch`)."""
        request = watch_request(kind, resource_version, selector, timeout)
        try:
            async with self._http.stream("GET", request.path, params=request.params,
                                         timeout=None) as response:  # fmt: skip
                if response.status_code != 200:
                    body = await response.aread()
                    raise error_from_response(response.status_code, body, request.what)
                async for line in response.aiter_lines():
                    if line.strip():
                        yield parse_watch_line(line)
        except httpx.TransportError as exc:
            raise Unavailable(f"watch {kind}: {exc}") from None

    async def tap(
        self,
        sandbox: str | None = None,
        *,
        service: str | None = None,
        key: str | None = None,
        status: str | None = None,
        seconds: float | None = None,
        capture_headers: bool = False,
        capture_body: int = 0,
    ) -> AsyncIterator[dict[str, Any]]:
        """Routing decisions (and message deliveries) as proxies make them (see `Client.tap`)."""
        request, what = tap_request(sandbox, service, key, status, seconds, capture_headers,
                                    capture_body)
        try:
            async with self._http.stream("GET", request.path, params=request.params,
                                         timeout=None) as response:  # fmt: skip
                if response.status_code != 200:
                    body = await response.aread()
                    raise error_from_response(response.status_code, body, what)
                async for line in response.aiter_lines():
                    if line.strip():
                        yield parse_tap_line(line)
        except httpx.TransportError as exc:
            raise Unavailable(f"{what}: {exc}") from None

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
