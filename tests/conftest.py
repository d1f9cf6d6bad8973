"""Shared fixtures: real upstreams in the test loop, real proxy processes, stopped after."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from forklane.proxy import hotpath
from tests.support.processes import Proc, start_proxy, write_config
from tests.support.upstream import RecordingUpstream


def pytest_configure(config: pytest.Config) -> None:
    """`FORKLANE_HOT_PATH=interpreted` (the second pass of `dev.py test`): in-process tests
    load the sources of the hot path too, as the proxy processes they start do (they read the
    same variable). Selected before collection imports any hot-path module."""
    if os.environ.get("FORKLANE_HOT_PATH") == "interpreted":
        hotpath.select("interpreted")


@pytest.fixture
async def upstreams() -> AsyncIterator[Callable[[str], Any]]:
    """`await upstreams("name")` starts a recording upstream; all are closed after the test."""
    started: list[RecordingUpstream] = []

    async def make(name: str) -> RecordingUpstream:
        up = await RecordingUpstream(name).start()
        started.append(up)
        return up

    yield make
    for up in started:
        await up.aclose()


@pytest.fixture
def proxy_factory(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """`proxy_factory(config_dict, *args)` writes the config and starts a proxy process."""
    procs: list[Proc] = []

    def make(doc: dict[str, Any] | None, *args: str, inbound: bool = False,
             env: dict[str, str] | None = None) -> Proc:
        n = len(procs)
        config = write_config(tmp_path / f"routing-{n}.yaml", doc) if doc is not None else None
        proc = start_proxy(config, tmp_path / f"proxy-{n}.log", *args, inbound=inbound, env=env)
        proc.config = config  # type: ignore[attr-defined]
        procs.append(proc)
        return proc

    yield make
    for proc in procs:
        proc.stop()
