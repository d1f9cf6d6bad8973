"""The SDK's public surface is pinned, and its two clients offer the same operations.

A name removed from `forklane.__all__`, or a method added to `Client` but not to `AsyncClient`
(or the other way round), fails here before a user notices.
"""

from __future__ import annotations

import inspect
import subprocess
import sys

import forklane
from forklane.client import AsyncClient, AsyncResource, AsyncSandboxes, Client, Resource, Sandboxes
from tests.sdk.controlplane_proc import REPO

PUBLIC = {
    "AsyncClient", "Client", "ConfigError", "Conflict", "Expired", "Forbidden", "ForklaneError",
    "Invalid", "NotFound", "RetryPolicy", "SandboxFailed", "SandboxHandle", "Unauthorized",
    "Unavailable", "WaitTimeout",
    # the API's models
    "Condition", "ForkSpec", "HeaderMatchSpec", "MatchSpec", "Metadata", "MirrorSpec",
    "ProxyInfo", "RouteGroup", "RouteGroupSpec", "Sandbox", "SandboxSpec", "ServiceResource",
    "ServiceSpec", "Split", "SplitDestinationSpec", "SplitSpec", "StickySpec", "TimeoutsSpec",
    "TtlSpec",
}  # fmt: skip


def public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in inspect.getmembers(cls)
        if not name.startswith("_") and callable(member)
    }


def test_every_exported_name_resolves() -> None:
    assert set(forklane.__all__) == PUBLIC
    for name in forklane.__all__:
        assert getattr(forklane, name) is not None
    assert issubclass(forklane.NotFound, forklane.ForklaneError)


def test_sync_and_async_clients_have_the_same_operations_and_parameters() -> None:
    pairs = [(Client, AsyncClient), (Resource, AsyncResource), (Sandboxes, AsyncSandboxes)]
    for sync_cls, async_cls in pairs:
        sync_methods = public_methods(sync_cls)
        async_methods = public_methods(async_cls)
        renamed = {"close": "aclose"}
        assert {renamed.get(n, n) for n in sync_methods} == set(async_methods), sync_cls
        for name, signature in sync_methods.items():
            other = async_methods[renamed.get(name, name)]
            assert list(signature.parameters) == list(other.parameters), (sync_cls, name)


def test_importing_the_sdk_and_cli_never_loads_the_proxy() -> None:
    code = (
        "import sys, forklane.cli, forklane.client;"
        "bad = sorted(m for m in sys.modules if m.startswith(('forklane.proxy', 'proxy')));"
        "print(','.join(bad))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == ""
