"""Stores behind one interface (`base.Store`); `open_store` picks the backend from a URL.

Backends are imported lazily so a deployment on SQLite never loads asyncpg and vice versa.
"""

from __future__ import annotations

from pathlib import Path

from forklane.controlplane.store.base import Store

__all__ = ["Store", "make_store"]


def make_store(
    url: str, *, data_dir: Path, schema: str | None = None, history: int = 10_000
) -> Store:
    """`sqlite` → `<data_dir>/forklane.db`; `sqlite:PATH`; `postgresql://…` (not yet opened)."""
    if url.startswith(("postgresql://", "postgres://")):
        from forklane.controlplane.store.postgres import PostgresStore

        return PostgresStore(url, schema=schema, history=history)
    if url == "sqlite" or url.startswith("sqlite:"):
        from forklane.controlplane.store.sqlite import SqliteStore

        path = Path(url.removeprefix("sqlite:")) if url != "sqlite" else data_dir / "forklane.db"
        return SqliteStore(path, history=history)
    raise ValueError(f"store {url!r}: expected 'sqlite', 'sqlite:PATH' or 'postgresql://…'")
