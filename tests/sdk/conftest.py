"""Fixtures for SDK tests: a scripted loopback HTTP server, and a real control plane process.

`scripted_server` runs an aiohttp server on 127.0.0.1:0 in its own thread (so the sync client
can call it from the test thread) and answers with whatever the test's handler returns; it is
for behaviour a real control plane cannot be made to show on demand (503s, HTML error pages,
dropped connections).

`controlplane` starts `python -m forklane.controlplane serve` on port 0 with a temporary data
directory and the bootstrap admin token from `FORKLANE_ADMIN_TOKEN`, waits for its
"listening on" line, and stops it afterwards. Tests using it skip, saying why, while the
control plane is not there yet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.sdk.controlplane_proc import (
    ADMIN_TOKEN,
    ControlPlane,
    controlplane_missing,
    start_controlplane,
)
from tests.sdk.sdk_support import Handler, ScriptedServer, ServerThread


@pytest.fixture
def scripted_server() -> Iterator[Callable[[Handler], ScriptedServer]]:
    """Call with an async handler; returns the running server's URL and its request log."""
    threads: list[ServerThread] = []

    def start(handler: Handler) -> ScriptedServer:
        server = ScriptedServer(url="")
        thread = ServerThread(handler, server.seen)
        threads.append(thread)
        thread.start()
        if not thread.ready.wait(timeout=10) or thread.error is not None:
            raise RuntimeError(f"scripted server did not start: {thread.error}")
        server.url = f"http://127.0.0.1:{thread.port}"
        return server

    yield start
    for thread in threads:
        thread.stop()


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# --- the real control plane -------------------------------------------------------------------


@pytest.fixture(scope="module")
def controlplane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    reason = controlplane_missing()
    if reason:
        pytest.skip(reason)
    data_dir = tmp_path_factory.mktemp("cp-data")
    running = start_controlplane(data_dir)
    try:
        yield ControlPlane(url=running.url, token=ADMIN_TOKEN, data_dir=data_dir)
    finally:
        running.stop()
