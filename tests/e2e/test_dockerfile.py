"""The Dockerfile cannot be built here (no Docker engine), so its promises are read from it:
two stages on one pinned slim base, the final stage non-root with the numeric UID capture
exempts (1337), iptables for the capture init, no build tools, and every file the package
build needs copied into the build stage."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEXT = (ROOT / "Dockerfile").read_text()


def test_dockerfile_promises() -> None:
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", TEXT, re.M)
    assert base and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base.group(1)), "pinned"
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?$", TEXT, re.M)
    assert stages == [("${PYTHON_IMAGE}", "build"), ("${PYTHON_IMAGE}", "")]
    final = TEXT.split("\nFROM ${PYTHON_IMAGE}\n", 1)[1]
    assert "USER 1337:1337" in final
    assert "iptables" in final and "COPY --from=build /opt/forklane /opt/forklane" in final
    for tool in ("gcc", "build-essential", "pip install", "git"):
        assert tool not in final, tool
    for needed in ("pyproject.toml", "setup.py", "constraints.txt", "README.md"):
        assert needed in TEXT.split("FROM ${PYTHON_IMAGE} AS build", 1)[1].split("\nFROM")[0]
    assert '".[all]"' in TEXT
    assert ".tools" in (ROOT / ".dockerignore").read_text().split()


def test_the_image_builds_the_compiled_hot_path() -> None:
    """A C compiler in the build stage, the constraints file for the isolated build too, and
    a build that fails unless `hotpath.mode()` says compiled; no local build products copied."""
    build = TEXT.split("FROM ${PYTHON_IMAGE} AS build", 1)[1].split("\nFROM")[0]
    assert "gcc" in build and "libc6-dev" in build
    assert "PIP_CONSTRAINT=/src/constraints.txt" in build
    assert "hotpath.mode()" in build and "'compiled'" in build
    ignored = (ROOT / ".dockerignore").read_text().split()
    for pattern in ("*.so", "*.c", "**/*.so", "**/*.c", "build"):
        assert pattern in ignored, pattern
