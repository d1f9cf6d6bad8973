"""A local wheelhouse of installed distributions, so `pip install` can run without a network.

`repack(dist, into)` turns an installed distribution back into a wheel from the files its
RECORD lists (the dist-info keeps the WHEEL tag), and `closure(requirements)` follows the
installed metadata to every distribution a set of requirements pulls in. Together they let
a test run a real `pip install --no-index --find-links HOUSE forklane`, where the resolver
fails if forklane asks for anything the wheelhouse does not hold.
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from collections.abc import Iterable
from importlib.metadata import Distribution, PackageNotFoundError, distribution
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

__all__ = ["closure", "repack"]


def closure(requirements: Iterable[str]) -> dict[str, Distribution]:
    """Installed distributions the requirements need, transitively (markers evaluated)."""
    env = default_environment()
    found: dict[str, Distribution] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
            continue
        name = canonicalize_name(req.name)
        if name in found:
            continue
        try:
            dist = distribution(req.name)
        except PackageNotFoundError:
            raise AssertionError(f"{req.name} is required but not installed here") from None
        found[name] = dist
        todo += [Requirement(r) for r in dist.requires or ()]
    return found


def _record_line(arcname: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{arcname},sha256={digest},{len(data)}"


def repack(dist: Distribution, into: Path) -> Path:
    """Write `dist` as a wheel into `into` and return its path."""
    files = [f for f in dist.files or () if ".." not in f.parts and "__pycache__" not in f.parts]
    info = next(f for f in files if f.parts[0].endswith(".dist-info"))
    info_dir = info.parts[0]
    wheel_meta = (Path(str(dist.locate_file(info_dir))) / "WHEEL").read_text()
    tags = [line.split(":", 1)[1].strip() for line in wheel_meta.splitlines()
            if line.startswith("Tag:")]  # fmt: skip
    name = dist.metadata["Name"].replace("-", "_")
    path = into / f"{name}-{dist.version}-{tags[0]}.whl"
    record: list[str] = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            arcname = f.as_posix()
            if arcname == f"{info_dir}/RECORD":
                continue
            data = Path(str(dist.locate_file(f))).read_bytes()
            zf.writestr(arcname, data)
            record.append(_record_line(arcname, data))
        record.append(f"{info_dir}/RECORD,,")
        zf.writestr(f"{info_dir}/RECORD", "\n".join(record) + "\n")
    return path
