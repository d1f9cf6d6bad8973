"""The SDK's sans-io core: every API operation written once, as a generator of commands.

An operation yields `Request` (answered with a `Response` or a `TransportFailure`) and
`Sleep` (answered with None) and finally returns its result. The sync and async transports
(`sdk._transport`) only execute those commands, so `Client` and `AsyncClient` share every
line of request building, retrying, response parsing, waiting and error translation.

Invariants:
- retries are bounded (`RetryPolicy.attempts`) with full-jitter exponential backoff from an
  injected `random.Random`; a request that may have reached the server (read timeout, 502,
  504) is retried only when its method is idempotent; connect failures and 503 always are;
- a non-2xx answer becomes a `ForklaneError` here and nowhere else;
- the clock is injected, so waits are tested without sleeping.
"""

from __future__ import annotations

import builtins
import json
import math
import random
import re
import secrets
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeAlias, TypeVar
from urllib.parse import quote

from pydantic import BaseModel, ValidationError

from forklane.controlplane.wire import (
    API_VERSION,
    ENDPOINT_PATTERN,
    Condition,
    ForkSpec,
    ProxyInfo,
    ProxyList,
    ResourceList,
    RouteGroup,
    Sandbox,
    SandboxSpec,
    ServiceResource,
    Split,
    TtlSpec,
    dump,
)
from forklane.errors import (
    Conflict,
    ForklaneError,
    Invalid,
    NotFound,
    SandboxFailed,
    Unavailable,
    WaitTimeout,
    error_from_response,
)

__all__ = [
    "API_PREFIX",
    "HARD_REASONS",
    "ROUTEGROUPS",
    "ROUTING_KEY_HEADER",
    "SANDBOXES",
    "SERVICES",
    "SPLITS",
    "Api",
    "Kind",
    "Op",
    "Request",
    "Response",
    "RetryPolicy",
    "SandboxHandle",
    "Sleep",
    "TransportFailure",
    "WatchEvent",
    "build_sandbox",
    "hard_failure",
    "parse_duration",
    "parse_tap_line",
    "parse_watch_line",
    "routing_headers",
    "tap_request",
    "waiting_reason",
    "watch_request",
]

API_PREFIX = "/api/v1"
ROUTING_KEY_HEADER = "x-forklane-routing-key"
BAGGAGE_MEMBER = "forklane-routing-key"
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
MAX_TTL_SECONDS = 30 * 24 * 3600

M = TypeVar("M", bound=BaseModel)
# Constrained, not bound: every resource kind has `metadata` and `spec`, which a bound to
# BaseModel could not promise.
R = TypeVar("R", Sandbox, RouteGroup, Split, ServiceResource)
T = TypeVar("T")


# --- commands ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    params: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None

    @property
    def what(self) -> str:
        return f"{self.method} {self.path}"


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    warnings: tuple[str, ...] = ()  # the texts of `Warning: 299 - "…"` headers


@dataclass(frozen=True, slots=True)
class TransportFailure:
    """The transport gave no answer; `sent` is False when the request surely never left."""

    reason: str
    sent: bool


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


Command: TypeAlias = Request | Sleep
Reply: TypeAlias = Response | TransportFailure | None
Op: TypeAlias = Generator[Command, Reply, T]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded retries of transient failures with full-jitter exponential backoff."""

    attempts: int = 4
    base_delay: float = 0.1
    max_delay: float = 2.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0, min(self.max_delay, self.base_delay * (2**attempt)))


# --- resource kinds ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Kind(Generic[R]):
    """One REST collection: its path segment, item model and list model."""

    plural: str
    label: str
    model: type[R]
    list_model: type[ResourceList[R]]

    def collection(self) -> str:
        return f"{API_PREFIX}/{self.plural}"

    def coerce(self, obj: R | Mapping[str, Any]) -> R:
        """A model as given, or one validated from a plain dict (`Invalid` with field paths
        for every problem); `apiVersion` and `kind` may be left out of the dict."""
        if isinstance(obj, self.model):
            return obj
        if not isinstance(obj, Mapping):
            raise Invalid(f"{self.label}: expected a {self.model.__name__} or a dict, "
                          f"not {type(obj).__name__}")
        doc = {"apiVersion": API_VERSION, "kind": self.model.__name__.removesuffix("Resource"),
               **obj}  # fmt: skip
        try:
            return self.model.model_validate(doc)
        except ValidationError as exc:
            raise invalid_from(exc, f"invalid {self.label}") from None

    def item(self, name: str) -> str:
        return f"{API_PREFIX}/{self.plural}/{quote(name, safe='')}"


SANDBOXES: Kind[Sandbox] = Kind("sandboxes", "sandbox", Sandbox, ResourceList[Sandbox])
ROUTEGROUPS: Kind[RouteGroup] = Kind(
    "routegroups", "route group", RouteGroup, ResourceList[RouteGroup]
)
SPLITS: Kind[Split] = Kind("splits", "split", Split, ResourceList[Split])
SERVICES: Kind[ServiceResource] = Kind(
    "services", "service", ServiceResource, ResourceList[ServiceResource]
)


# --- pure helpers ------------------------------------------------------------------------------

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str | float | timedelta) -> int:
    """Seconds from `90`, `90s`, `15m`, `2h`, `1d`, `1h30m` or a timedelta; > 0, whole seconds."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip().lower()
        if re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = float(text)
        else:
            parts = _DURATION_RE.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise Invalid(f"duration {value!r}: expected e.g. 90s, 15m, 2h, 1d or 1h30m",
                              fields=[("spec.ttl", "expected e.g. 90s, 15m, 2h, 1d or 1h30m")])
            seconds = sum(float(n) * _UNIT[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise Invalid(f"duration {value!r}: must be positive",
                      fields=[("spec.ttl", "must be positive")])
    return math.ceil(seconds)


def routing_headers(routing_key: str) -> dict[str, str]:
    """The headers that steer a request to a sandbox: the header and its W3C baggage twin."""
    return {ROUTING_KEY_HEADER: routing_key, "baggage": f"{BAGGAGE_MEMBER}={routing_key}"}


_ENDPOINT_RE = re.compile(ENDPOINT_PATTERN)


def parse_endpoints(text: str) -> list[str]:
    """`HOST:PORT[,HOST:PORT...]` → the list; ValueError naming the first bad one."""
    endpoints = [e.strip() for e in text.split(",") if e.strip()]
    for endpoint in endpoints:
        if not _ENDPOINT_RE.match(endpoint) or not 0 < int(endpoint.rpartition(":")[2]) < 65536:
            raise Invalid(f"endpoint {endpoint!r}: expected HOST:PORT with a port in 1..65535",
                          fields=[("spec.forks", f"endpoint {endpoint!r}: expected HOST:PORT")])
    return endpoints


def parse_fork(text: str) -> ForkSpec:
    """`SERVICE=HOST:PORT[,HOST:PORT...]` → a fork spec; `SERVICE=local` → a fork served by
    `forklane connect`."""
    service, sep, rest = text.partition("=")
    if not sep or not service.strip() or not rest.strip():
        raise Invalid(f"fork {text!r}: expected SERVICE=HOST:PORT[,HOST:PORT...]",
                      fields=[("spec.forks", f"{text!r}: expected SERVICE=HOST:PORT")])
    if rest.strip() == "local":
        return ForkSpec.model_validate({"service": service.strip(), "local": True})
    endpoints = parse_endpoints(rest)
    return ForkSpec.model_validate({"service": service.strip(), "endpoints": endpoints})


def new_sandbox_name() -> str:
    return f"sandbox-{secrets.token_hex(4)}"


def build_sandbox(
    forks: Sequence[ForkSpec | Mapping[str, Any] | str] | None = None,
    *,
    spec: SandboxSpec | Mapping[str, Any] | None = None,
    name: str | None = None,
    ttl: str | float | timedelta | None = None,
    labels: Mapping[str, str] | None = None,
    routing_key: str | None = None,
    default_ttl: str | float | timedelta | None = None,
) -> Sandbox:
    """A `Sandbox` resource from the convenient arguments of `client.sandbox(...)`.

    `forks` items may be `ForkSpec`s, dicts, or `"service=host:port"` strings; `spec` is the
    whole spec instead. `default_ttl` applies when neither `ttl` nor the spec sets one.
    Invalid input raises `Invalid` naming every problem with its field path.
    """
    if (forks is None) == (spec is None):
        raise Invalid("give exactly one of forks=[...] or spec=...")
    try:
        if spec is not None:
            spec_doc = dump(spec) if isinstance(spec, SandboxSpec) else dict(spec)
        else:
            assert forks is not None
            spec_doc = {"forks": [_fork_doc(f) for f in forks]}
        if ttl is None and spec_doc.get("ttl") is None:
            ttl = default_ttl
        if ttl is not None:
            spec_doc["ttl"] = {"seconds": parse_duration(ttl)}
        if routing_key is not None:
            spec_doc["routingKey"] = routing_key
        metadata = {"name": name or new_sandbox_name(), "labels": dict(labels or {})}
        return Sandbox.model_validate({"metadata": metadata, "spec": spec_doc})
    except ValidationError as exc:
        raise invalid_from(exc, "invalid sandbox") from None


def _fork_doc(fork: ForkSpec | Mapping[str, Any] | str) -> dict[str, Any]:
    if isinstance(fork, str):
        return dump(parse_fork(fork))
    if isinstance(fork, ForkSpec):
        return dump(fork)
    return dict(fork)


def field_paths(exc: ValidationError) -> list[tuple[str, str]]:
    """(`spec.forks[0].endpoints[0]`, message) for every problem pydantic found."""
    out: list[tuple[str, str]] = []
    for err in exc.errors():
        path = ""
        for part in err["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        out.append((path, str(err["msg"]).removeprefix("Value error, ")))
    return out


def invalid_from(exc: ValidationError, what: str) -> Invalid:
    fields = field_paths(exc)
    return Invalid(f"{what}: " + "; ".join(f"{p}: {m}" if p else m for p, m in fields[:3]),
                   fields=fields)  # fmt: skip


def _first_validation_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']}" if where else str(first["msg"])


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One event of a watch: its type and the object as the API shows it (JSON)."""

    type: str  # ADDED | MODIFIED | DELETED | BOOKMARK | ERROR
    object: dict[str, Any]

    @property
    def resource_version(self) -> str | None:
        meta = self.object.get("metadata")
        return meta.get("resourceVersion") if isinstance(meta, dict) else None


def watch_request(
    plural: str, resource_version: str | None, selector: str | None, timeout: float | None
) -> Request:
    params: list[tuple[str, str]] = [("watch", "true"), ("allowWatchBookmarks", "true")]
    if resource_version:
        params.append(("resourceVersion", resource_version))
    if selector:
        params.append(("labelSelector", selector))
    if timeout is not None:
        params.append(("timeoutSeconds", str(max(1, math.ceil(timeout)))))
    return Request("GET", f"{API_PREFIX}/{plural}", params=tuple(params))


def parse_watch_line(line: str) -> WatchEvent:
    """One NDJSON line of a watch; an ERROR event becomes the error it carries."""
    try:
        doc = json.loads(line)
    except ValueError:
        raise ForklaneError(f"watch: not a JSON event: {line[:100]!r}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("object"), dict):
        raise ForklaneError(f"watch: not an event: {line[:100]!r}")
    if doc.get("type") == "ERROR":
        status = doc["object"].get("error", {}).get("status", 500)
        raise error_from_response(int(status), json.dumps(doc["object"]).encode(), "watch")
    return WatchEvent(str(doc.get("type")), doc["object"])


def tap_request(
    sandbox: str | None,
    service: str | None,
    key: str | None,
    status: str | None,
    seconds: float | None,
    capture_headers: bool = False,
    capture_body: int = 0,
) -> tuple[Request, str]:
    """`GET /api/v1/tap`: the live stream of routing decisions (see `controlplane.tap_api`);
    `capture_headers` and `capture_body` (bytes of each body) ask for a capture."""
    params: list[tuple[str, str]] = []
    for name, value in (("sandbox", sandbox), ("service", service), ("key", key),
                        ("status", status)):  # fmt: skip
        if value:
            params.append((name, value))
    if seconds is not None:
        params.append(("seconds", f"{seconds:g}"))
    if capture_headers:
        params.append(("headers", "true"))
    if capture_body:
        params.append(("body", str(int(capture_body))))
    what = f"tap of sandboxes/{sandbox}" if sandbox else "tap"
    return Request("GET", f"{API_PREFIX}/tap", params=tuple(params)), what


def parse_tap_line(line: str) -> dict[str, Any]:
    """One NDJSON line of a tap: `type` is started | request | delivery | dropped."""
    try:
        doc = json.loads(line)
    except ValueError:
        raise ForklaneError(f"tap: not a JSON line: {line[:100]!r}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("type"), str):
        raise ForklaneError(f"tap: not a tap line: {line[:100]!r}")
    return doc


@dataclass(frozen=True, slots=True)
class SandboxHandle:
    """What `client.sandbox(...)` yields: the key to send and the headers that carry it."""

    name: str
    routing_key: str
    sandbox: Sandbox
    headers: Mapping[str, str] = field(default_factory=dict)


def sandbox_routing_key(sandbox: Sandbox) -> str | None:
    status_key = sandbox.status.routing_key if sandbox.status else None
    return status_key or sandbox.spec.routing_key


def handle_for(sandbox: Sandbox) -> SandboxHandle:
    key = sandbox_routing_key(sandbox)
    if not key:
        raise ForklaneError(f"sandbox {sandbox.metadata.name!r} is Ready but has no routing key")
    return SandboxHandle(
        name=sandbox.metadata.name, routing_key=key, sandbox=sandbox, headers=routing_headers(key)
    )


# Reasons the control plane gives for a condition that no amount of waiting changes: the
# sandbox must be changed (or its fork started under a name that resolves).
HARD_REASONS = frozenset({"CompileFailed", "ForkUnresolvable"})


def hard_failure(sandbox: Sandbox) -> Condition | None:
    """The first false condition whose reason is in `HARD_REASONS`, if any."""
    status = sandbox.status
    if status is None:
        return None
    return next(
        (c for c in status.conditions if c.status == "False" and c.reason in HARD_REASONS), None
    )


def waiting_reason(sandbox: Sandbox) -> str:
    """What a wait is waiting for, in a few words: `Pending: ForkUnreachable (host:port:
    Connect call failed)`; the first false condition other than `Ready` itself."""
    status = sandbox.status
    if status is None:
        return "Pending: no status yet"
    blocking = next(
        (c for c in status.conditions if c.status != "True" and c.type != "Ready"), None
    )
    if blocking is None:
        return status.phase
    detail = f" ({blocking.message})" if blocking.message else ""
    return f"{status.phase}: {blocking.reason or blocking.type}{detail}"


def describe_status(sandbox: Sandbox) -> str:
    """`phase Pending; conditions: Ready=False (ForkUnreachable: ...)` for error messages."""
    status = sandbox.status
    if status is None:
        return "no status yet"
    text = f"phase {status.phase}"
    conditions = [
        f"{c.type}={c.status}"
        + (
            f" ({': '.join(p for p in (c.reason, c.message) if p)})"
            if c.reason or c.message
            else ""
        )
        for c in status.conditions
    ]
    waiting = [f"{f.service}: {f.message or 'not ready'}" for f in status.forks if not f.ready]
    if conditions:
        text += "; conditions: " + ", ".join(conditions)
    if waiting:
        text += "; forks not ready: " + ", ".join(waiting)
    return text


# --- operations ----------------------------------------------------------------------------------


class Api:
    """Every REST operation as a generator; holds only immutable policy (no connection)."""

    def __init__(
        self,
        base_url: str,
        retry: RetryPolicy,
        rng: random.Random,
        clock: Callable[[], float],
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self._warn = warn
        self._base_url = base_url
        self._retry = retry
        self._rng = rng
        self._clock = clock
        self._wall_clock = wall_clock

    def call(self, request: Request) -> Op[Response]:
        """Send with bounded retries of transient failures; raise on any non-2xx answer."""
        idempotent = request.method in IDEMPOTENT
        last = ""
        for attempt in range(self._retry.attempts):
            if attempt:
                yield Sleep(self._retry.delay(attempt - 1, self._rng))
            reply = yield request
            if isinstance(reply, TransportFailure):
                last = reply.reason
                if reply.sent and not idempotent:
                    break
                continue
            assert isinstance(reply, Response)
            if 200 <= reply.status < 300:
                if self._warn is not None:
                    for text in reply.warnings:
                        self._warn(text)
                return reply
            retryable = reply.status == 503 or (reply.status in (502, 504) and idempotent)
            error = error_from_response(reply.status, reply.body, request.what)
            if not retryable or attempt == self._retry.attempts - 1:
                raise error
            last = str(error)
        raise Unavailable(
            f"control plane at {self._base_url} unavailable: {last}"
            f" ({request.what}, {self._retry.attempts} attempts)"
        )

    def _json(self, request: Request) -> Op[Any]:
        response = yield from self.call(request)
        if not response.body:
            return None
        try:
            return json.loads(response.body)
        except ValueError:
            raise ForklaneError(f"{request.what}: the answer is not JSON") from None

    def _model(self, request: Request, model: type[M]) -> Op[M]:
        doc = yield from self._json(request)
        try:
            return model.model_validate(doc)
        except ValidationError as exc:
            raise ForklaneError(
                f"{request.what}: unexpected answer ({_first_validation_error(exc)})"
            ) from None

    @staticmethod
    def _body(model: BaseModel) -> bytes:
        return json.dumps(dump(model), separators=(",", ":")).encode()

    # CRUD, the same for every kind.

    def create(self, kind: Kind[R], obj: R) -> Op[R]:
        request = Request("POST", kind.collection(), body=self._body(obj))
        return (yield from self._model(request, kind.model))

    def get(self, kind: Kind[R], name: str) -> Op[R]:
        return (yield from self._model(Request("GET", kind.item(name)), kind.model))

    def list(
        self, kind: Kind[R], labels: Mapping[str, str] | None = None, page_size: int = 500
    ) -> Op[builtins.list[R]]:
        """Every item, following `continue` tokens page by page."""
        params: list[tuple[str, str]] = [("limit", str(page_size))]
        if labels:
            params.append(("labelSelector", ",".join(f"{k}={v}" for k, v in labels.items())))
        items: builtins.list[R] = []
        token: str | None = None
        while True:
            page_params = (*params, ("continue", token)) if token else tuple(params)
            request = Request("GET", kind.collection(), params=page_params)
            page = yield from self._model(request, kind.list_model)
            items.extend(page.items)
            token = page.metadata.continue_
            if not token:
                return items

    def update(self, kind: Kind[R], obj: R) -> Op[R]:
        """Replace `obj`; 409 (`Conflict`) when its `metadata.resourceVersion` is stale."""
        name = obj.metadata.name
        request = Request("PUT", kind.item(name), body=self._body(obj))
        return (yield from self._model(request, kind.model))

    def delete(self, kind: Kind[R], name: str) -> Op[None]:
        yield from self.call(Request("DELETE", kind.item(name)))
        return None

    def apply_action(self, kind: Kind[R], obj: R, dry_run: bool = False) -> Op[tuple[str, R]]:
        """Create, or replace spec and labels (last write wins, like `kubectl apply`); the
        action is `created`, `configured` or `unchanged` (an equal spec writes nothing).
        `dry_run` asks the server to check everything and store nothing."""
        params = (("dryRun", "All"),) if dry_run else ()
        try:
            current = yield from self.get(kind, obj.metadata.name)
        except NotFound:
            request = Request("POST", kind.collection(), params=params, body=self._body(obj))
            return "created", (yield from self._model(request, kind.model))
        merged = current.model_copy(
            update={
                "spec": obj.spec,
                "metadata": current.metadata.model_copy(
                    update={"labels": obj.metadata.labels, "resource_version": None}
                ),
            }
        )
        request = Request("PUT", kind.item(obj.metadata.name), params=params,
                          body=self._body(merged))  # fmt: skip
        result = yield from self._model(request, kind.model)
        same = dump(result.spec) == dump(current.spec) and (
            result.metadata.labels == current.metadata.labels
        )
        return ("unchanged" if same else "configured"), result

    def apply(self, kind: Kind[R], obj: R, attempts: int = 5) -> Op[R]:
        """Create, or replace the spec and labels of the existing one (retrying on conflict)."""
        name = obj.metadata.name
        for attempt in range(attempts):
            if attempt:  # status writes also move resourceVersion: back off, re-read
                yield Sleep(self._retry.delay(attempt - 1, self._rng))
            try:
                current = yield from self.get(kind, name)
            except NotFound:
                try:
                    return (yield from self.create(kind, obj))
                except Conflict:
                    continue
            merged = current.model_copy(
                update={
                    "spec": obj.spec,
                    "metadata": current.metadata.model_copy(update={"labels": obj.metadata.labels}),
                }
            )
            try:
                return (yield from self.update(kind, merged))
            except Conflict:
                continue
        raise Conflict(f"{kind.label} {name!r} kept changing; gave up after {attempts} attempts")

    # Sandboxes.

    def wait_ready(
        self,
        name: str,
        timeout: float,
        on_poll: Callable[[Sandbox], None] | None = None,
        interval: float = 0.1,
        max_interval: float = 1.0,
    ) -> Op[Sandbox]:
        """Poll until the sandbox is Ready for its current generation.

        Raises `SandboxFailed` on phase Failed, on a condition whose reason says waiting
        cannot help (`HARD_REASONS`) and when the sandbox is being deleted; `WaitTimeout`
        (naming the last phase and conditions) at the deadline; `NotFound` if it disappears.
        """
        deadline = self._clock() + timeout
        while True:
            sandbox = yield from self.get(SANDBOXES, name)
            if on_poll is not None:
                on_poll(sandbox)
            status = sandbox.status
            if status is not None:
                current = (
                    status.observed_generation is None
                    or sandbox.metadata.generation is None
                    or status.observed_generation >= sandbox.metadata.generation
                )
                if status.phase == "Ready" and current:
                    return sandbox
                if status.phase == "Failed" and current:
                    raise SandboxFailed(f"sandbox {name!r} failed: {describe_status(sandbox)}")
                hard = hard_failure(sandbox) if current else None
                if hard is not None:
                    raise SandboxFailed(
                        f"sandbox {name!r} cannot become Ready ({hard.reason}): "
                        f"{describe_status(sandbox)}"
                    )
                if status.phase == "Terminating":
                    raise SandboxFailed(f"sandbox {name!r} is being deleted")
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise WaitTimeout(
                    f"sandbox {name!r} not Ready after {timeout:g}s: {describe_status(sandbox)}"
                )
            yield Sleep(min(interval, remaining))
            interval = min(max_interval, interval * 1.5)

    def extend(self, name: str, ttl: str | float | timedelta, attempts: int = 5) -> Op[Sandbox]:
        """Make the sandbox expire `ttl` from now (TTL counted from its creation)."""
        extra = parse_duration(ttl)
        for attempt in range(attempts):
            if attempt:  # status writes also move resourceVersion: back off, re-read
                yield Sleep(self._retry.delay(attempt - 1, self._rng))
            sandbox = yield from self.get(SANDBOXES, name)
            created = sandbox.metadata.creation_timestamp
            age = 0
            if created is not None:
                if created.tzinfo is None:
                    created = created.replace(tzinfo=UTC)
                age = max(0, math.ceil((self._wall_clock() - created).total_seconds()))
            seconds = age + extra
            if seconds > MAX_TTL_SECONDS:
                raise ValueError(
                    f"sandbox {name!r}: a TTL may reach at most 30 days after creation"
                )
            spec = sandbox.spec.model_copy(
                update={"ttl": TtlSpec.model_validate({"seconds": seconds})}
            )
            try:
                return (
                    yield from self.update(SANDBOXES, sandbox.model_copy(update={"spec": spec}))
                )
            except Conflict:
                continue
        raise Conflict(f"sandbox {name!r} kept changing; gave up after {attempts} attempts")

    # Others.

    def call_json(
        self, method: str, path: str, body: Any = None, params: Mapping[str, str] | None = None
    ) -> Op[Any]:
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        request = Request(method, path, params=tuple((params or {}).items()), body=data)
        return (yield from self._json(request))

    def proxies(self) -> Op[builtins.list[ProxyInfo]]:
        result = yield from self._model(Request("GET", f"{API_PREFIX}/proxies"), ProxyList)
        return result.items

    def snapshot(self) -> Op[dict[str, Any]]:
        """The compiled routing snapshot as JSON (the proxy's schema; not parsed here)."""
        doc = yield from self._json(Request("GET", f"{API_PREFIX}/snapshot"))
        if not isinstance(doc, dict):
            raise ForklaneError(f"GET {API_PREFIX}/snapshot: expected a JSON object")
        return doc
