"""The store interface: resources, a store-wide revision, change notification, tokens, audit.

Invariants every backend keeps (checked by one contract suite over all of them):
- the store has one revision counter that only grows; every resource write (create, spec
  update, status update, delete) bumps it by one inside the write's transaction, and the
  written record's `resource_version` is that revision;
- `generation` starts at 1 and grows by one when the spec or labels change, never on a
  status write;
- a write naming an `expected_version` that is not the record's current one fails with
  `Conflict`, and nothing is written;
- after a write commits, every listener of every store instance sharing the data (one
  process for SQLite; every replica for PostgreSQL) is called with the new revision, or a
  later one; listeners see strictly increasing revisions and re-read what they need;
- every resource write also appends one `Change` (ADDED, MODIFIED or DELETED, with the
  record as written, or as it was for DELETED) to a change log at its revision, in the same
  transaction; `changes(after=N)` returns every change after revision N in order, as long as
  N is not older than the history kept (`history` revisions), else raises `Expired`;
- tokens are kept only as a SHA-256 digest of their secret;
- every record and token carries the tenant it was written with; rows written before tenants
  existed read as `DEFAULT_TENANT` (records) and no tenant (tokens);
- events (what `describe` shows: condition changes, pushes and ACKs) are appended in order
  and each object keeps only its newest `EVENTS_KEPT`; they are diagnostics, never read to
  decide anything.

JSON documents (`labels`, `spec`, `status`) are stored and returned as plain dicts; the
store never interprets them.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

__all__ = [
    "DEFAULT_TENANT",
    "EVENTS_KEPT",
    "AlreadyExists",
    "AuditEntry",
    "Change",
    "ChangeListener",
    "Conflict",
    "EventEntry",
    "Expired",
    "NotFound",
    "Page",
    "Record",
    "Store",
    "StoreError",
    "TokenRecord",
    "Unavailable",
    "labels_match",
]

# The tenant of everything written before tenants existed, and of what names none.
DEFAULT_TENANT = "default"

JSON = dict[str, Any]
ChangeListener = Callable[[int], None]
EVENTS_KEPT = 200  # per object (kind, name); a proxy's push history is kept under its node id


class StoreError(Exception):
    """Base of the few errors a store raises; backend exceptions never escape a store."""


class NotFound(StoreError):
    pass


class AlreadyExists(StoreError):
    pass


class Conflict(StoreError):
    """The record changed since the version the caller read."""


class Expired(StoreError):
    """The revision asked for is older than the change history kept."""

    def __init__(self, message: str, oldest: int) -> None:
        super().__init__(message)
        self.oldest = oldest


class Unavailable(StoreError):
    """The database cannot be reached or failed; worth a retry later."""


@dataclass(frozen=True, slots=True)
class Record:
    kind: str
    name: str
    uid: str
    generation: int
    resource_version: int
    labels: Mapping[str, str]
    created_by: str
    created_at: datetime
    updated_at: datetime
    spec: JSON
    status: JSON | None = None
    tenant: str = DEFAULT_TENANT


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the change log: what a write at `revision` did to one record."""

    revision: int
    type: str  # ADDED | MODIFIED | DELETED
    record: Record  # as written; for DELETED, as it was
    labels_before: Mapping[str, str] | None  # None for ADDED


@dataclass(frozen=True, slots=True)
class Page:
    items: tuple[Record, ...]
    continue_after: str | None  # pass back as `after` for the next page; None when done
    revision: int


@dataclass(frozen=True, slots=True)
class TokenRecord:
    token_id: str
    subject: str
    role: str
    secret_sha256: str
    created_at: datetime
    created_by: str
    tenant: str | None = None  # developer tokens: the tenant they act in


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: datetime
    subject: str
    verb: str
    kind: str
    name: str
    generation_before: int | None
    generation_after: int | None
    revision: int | None = None
    seq: int = field(default=0)  # assigned by the store; increasing


@dataclass(frozen=True, slots=True)
class EventEntry:
    """Something that happened to one object (`kind`, `name`), or to a proxy (kind
    `proxies`, name its node id), as Kubernetes events tell it."""

    at: datetime
    kind: str
    name: str
    type: str  # Normal | Warning
    reason: str
    message: str = ""
    source: str = ""  # who: a subject, the reconciler, a proxy's node id
    seq: int = field(default=0)  # assigned by the store; increasing


class Selector(Protocol):
    """A label selector (`forklane.controlplane.selector.Selector`): the equality terms a
    backend may use to pre-filter, and the full match."""

    def equalities(self) -> dict[str, str]: ...

    def matches(self, labels: Mapping[str, str]) -> bool: ...


SelectorLike = Mapping[str, str] | Selector


def labels_match(labels: Mapping[str, str], selector: SelectorLike) -> bool:
    """An equality mapping (every pair present) or a full selector."""
    if isinstance(selector, Mapping):
        return all(labels.get(k) == v for k, v in selector.items())
    return selector.matches(labels)


def equality_terms(selector: SelectorLike | None) -> dict[str, str]:
    if selector is None:
        return {}
    return dict(selector) if isinstance(selector, Mapping) else selector.equalities()


class Store(abc.ABC):
    """One small interface; SQLite and PostgreSQL implement it without knowing each other."""

    def __init__(self, history: int = 10_000) -> None:
        self._listeners: list[ChangeListener] = []
        self._heard = 0
        self.history = history

    # -- life cycle -------------------------------------------------------------------------
    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and run pending migrations."""

    @abc.abstractmethod
    async def aclose(self) -> None: ...

    # -- change notification ----------------------------------------------------------------
    def add_listener(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: ChangeListener) -> None:
        self._listeners.remove(listener)

    def _notify(self, revision: int) -> None:
        """Tell listeners of a revision newer than any told before (one call may stand for
        several writes; an older or repeated revision is dropped)."""
        if revision <= self._heard:
            return
        self._heard = revision
        for listener in tuple(self._listeners):
            listener(revision)

    # -- resources --------------------------------------------------------------------------
    @abc.abstractmethod
    async def revision(self) -> int: ...

    @abc.abstractmethod
    async def create(
        self,
        kind: str,
        name: str,
        *,
        labels: Mapping[str, str],
        spec: JSON,
        status: JSON | None,
        created_by: str,
        now: datetime,
        tenant: str = DEFAULT_TENANT,
    ) -> Record: ...

    @abc.abstractmethod
    async def get(self, kind: str, name: str) -> Record: ...

    @abc.abstractmethod
    async def list(
        self,
        kind: str,
        *,
        selector: SelectorLike | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> Page:
        """Records in name order, after the name `after`, at most `limit` of them."""

    @abc.abstractmethod
    async def changes(
        self, kind: str | None, *, after: int, limit: int = 1000
    ) -> tuple[Change, ...]:
        """Changes with revision > `after` (of `kind`, or all), oldest first, at most `limit`.
        Raises `Expired` when changes after `after` were already trimmed."""

    @abc.abstractmethod
    async def list_all(self) -> tuple[int, tuple[Record, ...]]:
        """Every record of every kind and the revision they were read at (one consistent read)."""

    @abc.abstractmethod
    async def update(
        self,
        kind: str,
        name: str,
        *,
        labels: Mapping[str, str],
        spec: JSON,
        expected_version: int | None,
        now: datetime,
    ) -> tuple[Record, Record]:
        """Replace labels and spec; returns (before, after)."""

    @abc.abstractmethod
    async def update_status(
        self, kind: str, name: str, *, status: JSON, expected_version: int | None
    ) -> Record: ...

    @abc.abstractmethod
    async def delete(self, kind: str, name: str, *, expected_version: int | None = None) -> Record:
        """Remove the record; returns it as it was. Bumps the revision."""

    # -- tokens -----------------------------------------------------------------------------
    @abc.abstractmethod
    async def add_token(self, token: TokenRecord) -> None: ...

    @abc.abstractmethod
    async def get_token(self, token_id: str) -> TokenRecord | None: ...

    @abc.abstractmethod
    async def count_tokens(self, role: str) -> int: ...

    @abc.abstractmethod
    async def list_tokens(self) -> tuple[TokenRecord, ...]:
        """Every token (hashes only), oldest first."""

    @abc.abstractmethod
    async def delete_token(self, token_id: str) -> bool:
        """Remove (revoke) a token; False when there was none with that id."""

    # -- audit ------------------------------------------------------------------------------
    @abc.abstractmethod
    async def append_audit(self, entry: AuditEntry) -> None: ...

    @abc.abstractmethod
    async def list_audit(
        self, *, after: int = 0, limit: int = 100, kind: str | None = None,
        name: str | None = None,
    ) -> tuple[AuditEntry, ...]:
        """Entries with `seq > after` (of one object when `kind` and `name` are given),
        oldest first."""

    # -- events -----------------------------------------------------------------------------
    @abc.abstractmethod
    async def append_events(self, entries: Sequence[EventEntry]) -> None:
        """Append in one transaction; then each object named keeps its newest `EVENTS_KEPT`."""

    @abc.abstractmethod
    async def list_events(
        self, kind: str, name: str | None = None, *, since: datetime | None = None,
        limit: int = 100,
    ) -> tuple[EventEntry, ...]:
        """The newest `limit` events of one object (or of every object of `kind` when `name`
        is None) at or after `since`, oldest first."""
