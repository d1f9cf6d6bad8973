"""Bearer tokens, roles and the access policy of the REST API and the push stream.

Tokens look like `flk_<id>_<secret>` (hex); the store keeps only the id and the SHA-256 of
the secret, and the digest is compared in constant time. A bootstrap admin token may also
come from `FORKLANE_ADMIN_TOKEN` (any string of 16+ characters); it is never stored.

Roles:
- `admin`: everything, including tokens and the audit log;
- `developer`: reads services, splits, route groups and proxies; creates sandboxes and route
  groups and sees or changes only those it created;
- `proxy`: subscribes to snapshots (and may read `/api/v1/snapshot`); no REST writes;
- `consumer`: reads the routes view (`/api/v1/routes`: which keys fork which service) and
  nothing else: what a queue or stream consumer needs, without the endpoints a snapshot holds.

`authorize()` is pure: it takes the principal, the verb and the resource owner and answers
None (allowed) or the reason for a 403.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from forklane.controlplane.store.base import Store, TokenRecord

__all__ = [
    "ANONYMOUS_ADMIN",
    "ROLES",
    "Authenticator",
    "Grant",
    "Principal",
    "Role",
    "Verb",
    "authorize",
    "new_token",
    "subscription_refused",
]

Role = Literal["admin", "developer", "proxy", "consumer"]
Verb = Literal["get", "list", "create", "update", "delete"]
ROLES: tuple[Role, ...] = ("admin", "developer", "proxy", "consumer")
_PREFIX = "flk"


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    role: Role


ANONYMOUS_ADMIN = Principal("anonymous", "admin")


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token(subject: str, role: Role, *, created_by: str, now: datetime) -> tuple[str, TokenRecord]:
    """A fresh token (returned once, raw) and the record that stores it hashed."""
    token_id = secrets.token_hex(6)
    secret = secrets.token_hex(32)
    record = TokenRecord(token_id, subject, role, _digest(secret), now, created_by)
    return f"{_PREFIX}_{token_id}_{secret}", record


class Authenticator:
    """Turns a presented bearer token into a principal (or None)."""

    def __init__(self, store: Store, *, bootstrap_token: str | None = None) -> None:
        self._store = store
        self._bootstrap = None if bootstrap_token is None else _digest(bootstrap_token)

    async def authenticate(self, token: str) -> Principal | None:
        if self._bootstrap is not None and hmac.compare_digest(_digest(token), self._bootstrap):
            return Principal("admin", "admin")
        prefix, _, rest = token.partition("_")
        token_id, _, secret = rest.partition("_")
        if prefix != _PREFIX or not token_id or not secret:
            return None
        record = await self._store.get_token(token_id)
        if record is None or record.role not in ROLES:
            return None
        if not hmac.compare_digest(_digest(secret), record.secret_sha256):
            return None
        return Principal(record.subject, record.role)


_OWNED = frozenset({"sandboxes", "routegroups"})
_READABLE_BY_DEVELOPERS = frozenset({"services", "splits", "routegroups", "proxies", "routes"})


def authorize(principal: Principal, verb: Verb, resource: str, owner: str | None = None) -> str | None:
    """None when allowed, otherwise why not. `owner` is the creator of an existing object."""
    if principal.role == "admin":
        return None
    if principal.role == "proxy":
        if verb == "get" and resource == "snapshot":
            return None
        return "proxy tokens may only subscribe to snapshots"
    if principal.role == "consumer":
        if verb in ("get", "list") and resource == "routes":
            return None
        return "consumer tokens may only read the routes view (GET /api/v1/routes)"
    # developer
    if resource in _OWNED:
        if verb in ("create", "list"):
            return None
        if owner is not None and owner != principal.subject:
            return f"{resource}/… belongs to {owner!r}; developers may only use their own"
        return None
    if resource in _READABLE_BY_DEVELOPERS and verb in ("get", "list"):
        return None
    if resource == "snapshot" and verb == "get":
        return None
    return f"only admins may {verb} {resource}"


# -- the push stream ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Grant:
    """What a stream's token allows: `namespace` None means any service; otherwise the proxy
    may subscribe only as a service of that namespace (`NAME.NAMESPACE`)."""

    subject: str = ""
    namespace: str | None = None


def subscription_refused(grant: Grant, service: str | None) -> str | None:
    """Why this grant may not subscribe as `service` (None: it may). Pure."""
    if grant.namespace is None or service is None:
        return None
    if service.endswith(f".{grant.namespace}") and service != f".{grant.namespace}":
        return None
    return (
        f"{grant.subject or 'this token'} may subscribe only as a service of namespace "
        f"{grant.namespace!r} (NAME.{grant.namespace}), not {service!r}"
    )
