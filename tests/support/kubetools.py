"""Where the real `kubectl` and `helm` binaries are: `.tools/bin` (put there by
`python3 scripts/dev.py tools`, which the test job runs), else the PATH."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def tool(name: str) -> str:
    """The binary's path, or skip the test saying how to get it."""
    local = ROOT / ".tools" / "bin" / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} not found: run `python3 scripts/dev.py tools` (needs npm)")
    return found
