"""The REST API's error taxonomy: every failure the client sees is an `ApiError`.

Store errors and validation errors are translated here, once, into the status and the
`wire.ErrorBody` the client gets; nothing else leaks (no tracebacks, no library messages
beyond the reason).
"""

from __future__ import annotations

from typing import Literal

from pydantic import ValidationError

from forklane.controlplane import wire
from forklane.controlplane.compiler import error_paths
from forklane.controlplane.store.base import (
    AlreadyExists,
    Conflict,
    NotFound,
    StoreError,
    Unavailable,
)

__all__ = ["AddressInUse", "ApiError", "from_store_error", "from_validation_error"]

Reason = Literal[
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "Conflict",
    "Expired",
    "Invalid",
    "PreconditionFailed",
    "UnsupportedMediaType",
    "Unavailable",
    "TooManyRequests",
    "Internal",
]

_REASONS: dict[int, Reason] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "BadRequest",
    409: "Conflict",
    410: "Expired",
    412: "PreconditionFailed",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    503: "Unavailable",
}


class AddressInUse(OSError):
    """A listen address another process holds; the message names it and says what to do."""


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, details: list[wire.FieldError] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or []

    @property
    def reason(self) -> Reason:
        return _REASONS.get(self.status, "Internal")

    def body(self) -> wire.ErrorBody:
        return wire.ErrorBody(
            error=wire.ErrorDetail(
                status=self.status, reason=self.reason, message=self.message, details=self.details
            )
        )


def from_validation_error(exc: ValidationError, prefix: str = "") -> ApiError:
    details = [wire.FieldError(field=p, message=m) for p, m in error_paths(exc, prefix)]
    summary = "; ".join(f"{d.field}: {d.message}" for d in details[:3])
    return ApiError(422, f"invalid resource: {summary}", details)


def from_store_error(exc: StoreError) -> ApiError:
    if isinstance(exc, NotFound):
        return ApiError(404, str(exc))
    if isinstance(exc, AlreadyExists | Conflict):
        return ApiError(409, str(exc))
    if isinstance(exc, Unavailable):
        return ApiError(503, "the store is unavailable; retry later")
    return ApiError(500, "store error")
