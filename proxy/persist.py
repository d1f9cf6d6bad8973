"""The last ACKed routing snapshot on disk, so a restarted sidecar serves during an outage.

The file is `<state_dir>/snapshot.json` and holds exactly a `RoutingSnapshot` as JSON, so it is
also a valid static config file for the proxy.

Invariants:
- a write is atomic: a temporary file in the same directory is written, fsynced and renamed
  over the old one (and the directory fsynced), so a crash leaves the old or the new
  snapshot, never half of one;
- reading never crashes the sidecar: a missing file is None; an unreadable, corrupt or
  invalid one is None with a logged warning (the sidecar then waits for the control plane).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pydantic import ValidationError

from forklane.proxy.push_messages import describe_validation_error
from forklane.proxy.schema import RoutingSnapshot

__all__ = ["SNAPSHOT_FILE", "load_snapshot", "save_snapshot"]

log = logging.getLogger("forklane.proxy.persist")

SNAPSHOT_FILE = "snapshot.json"


def save_snapshot(directory: Path, snapshot: RoutingSnapshot) -> Path:
    """Write atomically and durably; returns the file's path. Raises OSError on I/O failure."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / SNAPSHOT_FILE
    tmp = directory / f".{SNAPSHOT_FILE}.{os.getpid()}.tmp"
    data = snapshot.model_dump_json().encode()
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(directory)
    return target


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_snapshot(directory: Path) -> RoutingSnapshot | None:
    """The persisted snapshot, or None (missing: silently; unusable: with a warning)."""
    path = directory / SNAPSHOT_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("persisted snapshot %s is unreadable, ignoring it: %s", path, exc)
        return None
    try:
        return RoutingSnapshot.model_validate_json(data)
    except ValidationError as exc:
        log.warning(
            "persisted snapshot %s is corrupt or invalid, ignoring it: %s",
            path,
            describe_validation_error(exc),
        )
        return None
