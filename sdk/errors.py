"""The SDK's error taxonomy: one exception per thing a caller can act on.

Every failure the SDK reports is a `ForklaneError`. HTTP answers are translated exactly once,
in `error_from_response`, from the control plane's `ErrorBody` (falling back to the status
line when the body is not ours, e.g. a gateway's HTML page). Transport failures are turned
into `Unavailable` by the transports once their retries are spent. Nothing from httpx or
pydantic leaks past the SDK.

Invariants:
- `str(error)` is one readable line carrying the server's reason (the CLI prints exactly that);
- `Invalid.fields` is a list of `(path, message)` pairs, empty when the server named no field;
- the class says what to do: `Unavailable` may succeed later, the others will not by retrying.
"""

from __future__ import annotations

import json

__all__ = [
    "ConfigError",
    "Conflict",
    "Expired",
    "Forbidden",
    "ForklaneError",
    "Invalid",
    "NotFound",
    "SandboxFailed",
    "Unauthorized",
    "Unavailable",
    "WaitTimeout",
    "error_from_response",
]


class ForklaneError(Exception):
    """Base of every SDK error; `status` and `reason` are the server's when it answered."""

    def __init__(self, message: str, *, status: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.reason = reason

    def __str__(self) -> str:
        return self.message


class NotFound(ForklaneError):
    """The named resource does not exist (404)."""


class Conflict(ForklaneError):
    """The name is taken, or the resource changed since it was read (409, 412)."""


class Unauthorized(ForklaneError):
    """No token, or a token the control plane does not accept (401)."""


class Forbidden(ForklaneError):
    """The token is valid but its role may not do this (403)."""


class Invalid(ForklaneError, ValueError):
    """Input that cannot be right: rejected by the control plane (400, 422), or found invalid
    by the SDK before sending. `fields` names what to fix as `(path, message)` pairs, e.g.
    `("spec.forks[0].service", "unknown service 'catalog'")`. Also a `ValueError`."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        reason: str = "",
        fields: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(message, status=status, reason=reason)
        self.fields: list[tuple[str, str]] = list(fields or [])

    def __str__(self) -> str:
        if not self.fields or self.fields[0][0] in self.message:
            return self.message
        named = "; ".join(f"{path}: {msg}" if path else msg for path, msg in self.fields)
        return f"{self.message} ({named})"


class Unavailable(ForklaneError):
    """The control plane could not be reached or said it cannot serve now; worth a retry later."""


class Expired(ForklaneError):
    """A watch asked for a resourceVersion older than the history kept (410): list again,
    then watch from the list's resourceVersion."""


class WaitTimeout(ForklaneError):
    """A wait ended at its deadline; the message names the last phase and conditions seen."""


class SandboxFailed(ForklaneError):
    """While we waited for Ready, the sandbox reached phase Failed, got a condition that
    waiting cannot change (a fork host that does not exist), or started being deleted."""


class ConfigError(ForklaneError):
    """The client configuration (arguments, environment, config file) is unusable."""


_BY_STATUS: dict[int, type[ForklaneError]] = {
    400: Invalid,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Expired,
    412: Conflict,
    422: Invalid,
    502: Unavailable,
    503: Unavailable,
    504: Unavailable,
}


def _parse_error_body(body: bytes) -> tuple[str, str, list[tuple[str, str]]] | None:
    """(reason, message, fields) from an `ErrorBody`, or None when the body is not one.

    Parsed by hand rather than with the wire model so that an error body carrying a reason
    this SDK does not know yet still yields its message.
    """
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    error = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return None
    fields: list[tuple[str, str]] = []
    for item in error.get("details") or []:
        if isinstance(item, dict):
            fields.append((str(item.get("field", "")), str(item.get("message", ""))))
    return str(error.get("reason", "")), error["message"], fields


def error_from_response(status: int, body: bytes, what: str) -> ForklaneError:
    """Translate a non-2xx answer to `what` (e.g. `GET /api/v1/sandboxes/x`) into an error."""
    parsed = _parse_error_body(body)
    if parsed is not None:
        reason, message, fields = parsed
    else:
        snippet = body.decode("utf-8", "replace").strip().splitlines()
        first = snippet[0][:200] if snippet else ""
        reason, fields = "", []
        message = f"{what} answered HTTP {status}" + (f": {first}" if first else "")
    cls = _BY_STATUS.get(status, ForklaneError)
    if cls is Invalid:
        return Invalid(message, status=status, reason=reason, fields=fields)
    return cls(message, status=status, reason=reason)
