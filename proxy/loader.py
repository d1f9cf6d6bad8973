"""Reading routing snapshots from files, and watching a file for changes.

Loading is the boundary where bytes become a validated `RoutingSnapshot`: every problem
(unreadable file, YAML syntax, schema violation) becomes one `ConfigError` whose message names
the file and the field, so the operator sees why a reload was refused.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from forklane.proxy.jsonlimits import loads_bounded
from forklane.proxy.schema import RoutingSnapshot
from forklane.proxy.table import ConfigError

__all__ = ["FileWatcher", "format_validation_error", "load_snapshot_file", "parse_snapshot"]


def format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"{where}: {err['msg']}")
    return "; ".join(lines)


def parse_snapshot(data: bytes, origin: str) -> RoutingSnapshot:
    """YAML or JSON bytes → snapshot. A file without `version` gets one from its content hash."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{origin}: not UTF-8 ({exc})") from None
    doc: Any
    try:
        doc = loads_bounded(text) if text.lstrip().startswith("{") else _yaml_load(text)
    except ValueError as exc:
        raise ConfigError(f"{origin}: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{origin}: expected a mapping at the top level")
    if "version" not in doc:
        doc["version"] = "sha256:" + hashlib.sha256(data).hexdigest()[:16]
    try:
        return RoutingSnapshot.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(f"{origin}: {format_validation_error(exc)}") from None


def _yaml_load(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except RecursionError:
        raise ValueError("invalid YAML: nested too deeply") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValueError(f"invalid YAML{where}: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"invalid YAML: {' '.join(str(exc).split())}") from None


def load_snapshot_file(path: Path) -> RoutingSnapshot:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    return parse_snapshot(data, str(path))


class FileWatcher:
    """Notices when a file was replaced or rewritten (mtime, size, inode), by polling.

    Polling a `stat()` once a second costs nothing measurable and, unlike inotify, sees
    Kubernetes ConfigMap updates (a symlink swap) and works on every platform.
    """

    def __init__(self, path: Path, on_change: Callable[[], object]) -> None:
        self.path = path
        self.on_change = on_change
        self._seen = self._signature()

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def poll(self) -> None:
        sig = self._signature()
        if sig is not None and sig != self._seen:
            self._seen = sig
            self.on_change()
