"""Messages of the snapshot push stream (`/forklane.push.v1.SnapshotService/Stream`), as JSON.

The proxy opens one bidirectional stream and speaks first; both ends import these models (the
control plane from here, because dependencies point controlplane → proxy only). The exchange
follows xDS:

- proxy → control plane, `SubscribeRequest`: the first one carries `node` (who is asking);
  every later one answers exactly one push. An ACK repeats the pushed `version_info` and its
  `nonce` in `response_nonce`; a NACK keeps `version_info` at the version still applied and
  says why in `error_detail`. An answer whose nonce is not the latest push's is stale and
  ignored.
- control plane → proxy, `SnapshotResponse`: `kind="full"` carries a whole `RoutingSnapshot`.
  `kind="delta"` is reserved: a delta will name the version it applies to and the changes, and
  a server sends it only to a node that lists `"delta"` in `capabilities` (today every node
  says `("full",)`; a proxy that gets a delta it did not ask for NACKs it).
- activity: a proxy that routed keyed requests sends `SubscribeRequest.activity`, the keys
  seen since its last report (every few seconds; not an answer to a push);
- live tap (only to a node that lists `"tap"` in `capabilities`): the control plane sends
  `kind="tap"` with `taps`, the whole set of filters somebody watches now (replacing the
  previous set; empty: nobody); it is not a snapshot and is never answered. The proxy sends
  what matched as `SubscribeRequest.tap` batches (records plus drops per filter), which are
  not answers to any push either.

Invariants:
- a response is decoded in two steps, envelope then snapshot, so a snapshot this proxy cannot
  accept still yields its `version_info` and `nonce` and can be NACKed (`SnapshotRejected`);
- a full response's snapshot version equals its `version_info`;
- encoding a full response splices the snapshot's JSON as given, so the control plane encodes
  each version once however many streams it pushes to.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from forklane.proxy.schema import RoutingSnapshot

__all__ = [
    "MAX_ACTIVITY_KEYS",
    "METHOD",
    "REPLICA_METADATA",
    "SERVICE",
    "MessageError",
    "Node",
    "SnapshotRejected",
    "SnapshotResponse",
    "SubscribeRequest",
    "TapBatch",
    "TapFilterSpec",
    "decode_request",
    "decode_response",
    "describe_validation_error",
    "encode_full_response",
    "encode_request",
    "encode_response",
    "encode_tap_filters",
]

SERVICE = "forklane.push.v1.SnapshotService"
METHOD = f"/{SERVICE}/Stream"
# Initial metadata the server sends once a stream is authorised and registered; its value is
# the replica's name. A proxy is "connected" only once it has seen it.
REPLICA_METADATA = "x-forklane-replica"
MAX_ERROR_DETAIL = 2000


class _Msg(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Node(_Msg):
    """Who subscribes: a stable id per sidecar, the service it stands beside, its listeners,
    and the forklane version it runs (shown by `forklane version` and `forklane proxies`).
    Unknown fields are ignored, so a newer proxy can tell an older control plane more."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str = Field(min_length=1, max_length=253)
    version: str | None = Field(default=None, max_length=64)
    service: str | None = Field(default=None, max_length=253)
    listeners: tuple[str, ...] = Field(default=(), max_length=16)
    capabilities: tuple[Literal["full", "delta", "tap"], ...] = ("full",)


MAX_TAP_FILTERS = 64
MAX_ACTIVITY_KEYS = 10_000
MAX_TAP_RECORDS = 200  # with targets cut at 2 KiB, a batch stays well under 1 MiB


class TapFilterSpec(_Msg):
    """One viewer's filter as pushed (see `forklane.proxy.tap.TapFilter`)."""

    id: str = Field(min_length=1, max_length=64)
    keys: tuple[str, ...] = Field(default=(), max_length=64)
    service: str | None = Field(default=None, max_length=253)
    status_class: int | None = Field(default=None, ge=0, le=5)
    # capture (off by default; see `forklane.proxy.tap_capture`): the heads, the first
    # `body` bytes of each body, and the fields to redact beyond the ones always redacted
    headers: bool = False
    body: int = Field(default=0, ge=0, le=16 * 1024)
    redact: tuple[str, ...] = Field(default=(), max_length=64)


class TapBatch(_Msg):
    """Records that matched pushed filters, and per filter how many did not fit the buffer."""

    records: tuple[dict[str, Any], ...] = Field(default=(), max_length=MAX_TAP_RECORDS)
    dropped: dict[str, int] = Field(default_factory=dict, max_length=MAX_TAP_FILTERS)


class SubscribeRequest(_Msg):
    node: Node | None = None
    version_info: str = Field(
        default="", max_length=128, description="last applied version, '' if none"
    )
    response_nonce: str = Field(default="", max_length=64, description="the push this answers")
    error_detail: str | None = Field(
        default=None, max_length=MAX_ERROR_DETAIL, description="NACK reason"
    )
    tap: TapBatch | None = Field(default=None, description="live-tap records, not an answer")
    activity: tuple[str, ...] | None = Field(
        default=None, max_length=MAX_ACTIVITY_KEYS,
        description="routing keys seen since the last report (not an answer)",
    )

    @property
    def is_nack(self) -> bool:
        return bool(self.error_detail)


class SnapshotResponse(_Msg):
    version_info: str = Field(min_length=1, max_length=128)
    nonce: str = Field(min_length=1, max_length=64)
    kind: Literal["full", "delta", "tap"] = "full"
    snapshot: RoutingSnapshot | None = None
    taps: tuple[TapFilterSpec, ...] | None = Field(default=None, max_length=MAX_TAP_FILTERS)


class _Envelope(_Msg):
    """A response with its snapshot still raw: validated separately so it can be NACKed."""

    version_info: str = Field(min_length=1, max_length=128)
    nonce: str = Field(min_length=1, max_length=64)
    kind: str
    snapshot: dict[str, Any] | None = None
    taps: tuple[TapFilterSpec, ...] | None = Field(default=None, max_length=MAX_TAP_FILTERS)


class MessageError(ValueError):
    """Bytes that are not a message of this protocol at all (cannot even be answered)."""


class SnapshotRejected(ValueError):
    """A well-formed push whose snapshot this proxy refuses: answer it with a NACK."""

    def __init__(self, version_info: str, nonce: str, reason: str) -> None:
        super().__init__(reason)
        self.version_info = version_info
        self.nonce = nonce
        self.reason = reason


def describe_validation_error(exc: ValidationError, limit: int = 5) -> str:
    """A one-line reason naming the fields, short enough for a NACK or a log line."""
    parts = []
    for err in exc.errors()[:limit]:
        msg = err["msg"].removeprefix("Value error, ")
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc}: {msg}" if loc else msg)
    more = exc.error_count() - limit
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


def encode_request(request: SubscribeRequest) -> bytes:
    return request.model_dump_json(exclude_defaults=True).encode()


def decode_request(data: bytes) -> SubscribeRequest:
    try:
        return SubscribeRequest.model_validate_json(data)
    except ValidationError as exc:
        raise MessageError(f"bad SubscribeRequest: {describe_validation_error(exc)}") from exc


def encode_response(response: SnapshotResponse) -> bytes:
    # `taps` only in tap messages, so a snapshot push reads the same to an older proxy
    exclude = {"taps"} if response.taps is None else None
    return response.model_dump_json(exclude=exclude).encode()


def encode_full_response(version_info: str, nonce: str, snapshot_json: bytes) -> bytes:
    """A full response around an already encoded snapshot (encoded once per version)."""
    head = json.dumps({"version_info": version_info, "nonce": nonce, "kind": "full"})
    return head[:-1].encode() + b', "snapshot": ' + snapshot_json + b"}"


def encode_tap_filters(nonce: str, filters: tuple[TapFilterSpec, ...]) -> bytes:
    """The `kind="tap"` message: the whole set of filters somebody watches now."""
    # A filter's defaults are left out, so a filter without capture reads the same to a
    # proxy that knows no capture fields.
    return json.dumps({
        "version_info": "tap", "nonce": nonce, "kind": "tap",
        "taps": [f.model_dump(mode="json", exclude_defaults=True) for f in filters],
    }, separators=(",", ":")).encode()


def decode_response(data: bytes) -> SnapshotResponse:
    """Raises MessageError for garbage, SnapshotRejected for a push to NACK."""
    try:
        env = _Envelope.model_validate_json(data)
    except ValidationError as exc:
        raise MessageError(f"bad SnapshotResponse: {describe_validation_error(exc)}") from exc
    if env.kind == "tap":
        return SnapshotResponse(
            version_info=env.version_info, nonce=env.nonce, kind="tap", taps=env.taps or ()
        )
    if env.kind != "full":
        raise SnapshotRejected(
            env.version_info, env.nonce, f"{env.kind!r} responses are not supported (full only)"
        )
    if env.snapshot is None:
        raise SnapshotRejected(env.version_info, env.nonce, "a full response needs a snapshot")
    try:
        snapshot = RoutingSnapshot.model_validate(env.snapshot)
    except ValidationError as exc:
        reason = f"snapshot {env.version_info}: {describe_validation_error(exc)}"
        raise SnapshotRejected(env.version_info, env.nonce, reason) from exc
    if snapshot.version != env.version_info:
        raise SnapshotRejected(
            env.version_info,
            env.nonce,
            f"snapshot version {snapshot.version!r} differs from version_info",
        )
    return SnapshotResponse(
        version_info=env.version_info, nonce=env.nonce, kind="full", snapshot=snapshot
    )
