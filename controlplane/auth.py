"""Bearer tokens, roles and the access policy of the REST API and the push stream.

Tokens look like `flk_<id>_<secret>` (hex); the store keeps only the id and the SHA-256 of
the secret, and the digest is compared in constant time. A bootstrap admin token may also
come from `FORKLANE_ADMIN_TOKEN` (any string of 16+ characters); it is never stored.

Roles:
- `admin`: everything, in every tenant, including tokens and the audit log;
- `developer`: acts in one tenant (its token's; `default` when the token names none). Reads
  services, splits and proxies (shared by every tenant); creates sandboxes and route groups in
  its tenant only, and sees or changes only those it created. Another tenant's objects are
  hidden (404, as if they did not exist); a colleague's in its own tenant are refused (403);
- `proxy`: subscribes to snapshots (and may read `/api/v1/snapshot`); no REST writes;
- `consumer`: reads the routes view (`/api/v1/routes`: which keys fork which service) and
  nothing else: what a queue or stream consumer needs, without the endpoints a snapshot holds.

`authorize()` is pure: it takes the principal, the verb and the resource's owner and tenant
and answers None (allowed) or a `Refusal` (its reason, and whether to hide the object).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from forklane.controlplane.store.base import DEFAULT_TENANT, Store, TokenRecord

__all__ = [
    "ANONYMOUS_ADMIN",
    "ROLES",
    "Authenticator",
    "Grant",
    "Principal",
    "Refusal",
    "Role",
    "Verb",
    "authorize",
    "create_tenant",
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
    tenant: str = DEFAULT_TENANT  # where a developer acts; the other roles act in every tenant

    def owns(self, owner: str | None, tenant: str | None) -> bool:
        """Whether this principal created the object (`owner`) in its own tenant."""
        return owner == self.subject and (tenant or DEFAULT_TENANT) == self.tenant


ANONYMOUS_ADMIN = Principal("anonymous", "admin")


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a call is refused. `hidden`: the object is another tenant's, so the answer is the
    404 a missing object gets (its existence is not the caller's to learn); the reason goes
    to the audit log only."""

    reason: str
    hidden: bool = False


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token(
    subject: str, role: Role, *, created_by: str, now: datetime, tenant: str | None = None
) -> tuple[str, TokenRecord]:
    """A fresh token (returned once, raw) and the record that stores it hashed."""
    token_id = secrets.token_hex(6)
    secret = secrets.token_hex(32)
    record = TokenRecord(token_id, subject, role, _digest(secret), now, created_by, tenant)
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
        return Principal(record.subject, record.role, record.tenant or DEFAULT_TENANT)


_OWNED = frozenset({"sandboxes", "routegroups"})
_READABLE_BY_DEVELOPERS = frozenset({"services", "splits", "routegroups", "proxies", "routes"})


def authorize(
    principal: Principal, verb: Verb, resource: str, owner: str | None = None,
    tenant: str | None = None,
) -> Refusal | None:
    """None when allowed, otherwise why not. `owner` and `tenant` are those of an existing
    object (sandboxes and route groups)."""
    if principal.role == "admin":
        return None
    if principal.role == "proxy":
        if verb == "get" and resource == "snapshot":
            return None
        return Refusal("proxy tokens may only subscribe to snapshots")
    if principal.role == "consumer":
        if verb in ("get", "list") and resource == "routes":
            return None
        return Refusal("consumer tokens may only read the routes view (GET /api/v1/routes)")
    # developer
    if resource in _OWNED:
        if verb in ("create", "list"):
            return None
        if tenant is not None and tenant != principal.tenant:
            return Refusal(f"{resource}/… is in tenant {tenant!r}; the token of "
                           f"{principal.subject!r} acts in tenant {principal.tenant!r}",
                           hidden=True)  # fmt: skip
        if owner is not None and owner != principal.subject:
            return Refusal(f"{resource}/… belongs to {owner!r}; developers may only use their own")
        return None
    if resource in _READABLE_BY_DEVELOPERS and verb in ("get", "list"):
        return None
    if resource == "snapshot" and verb == "get":
        return None
    return Refusal(f"only admins may {verb} {resource}")


def create_tenant(principal: Principal, named: str | None) -> tuple[str, Refusal | None]:
    """The tenant a new sandbox or route group gets: the one named (admins may name any), else
    the developer's own, else `default`; a developer naming another tenant is refused."""
    if principal.role != "developer":
        return named or DEFAULT_TENANT, None
    if named is not None and named != principal.tenant:
        return principal.tenant, Refusal(
            f"the token of {principal.subject!r} acts in tenant {principal.tenant!r}; it cannot "
            f"create in tenant {named!r} (omit metadata.tenant, or ask an admin)")
    return principal.tenant, None


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
