"""forklane SDK: REST clients, the API's models, propagation helpers, and the `forklane` CLI.

    from forklane import Client
    with Client() as client, client.sandbox(forks=["pricing=127.0.0.1:9000"]) as sb:
        requests.get("http://frontend/", headers=sb.headers)

`pip install forklane` is this SDK alone (httpx, pydantic, PyYAML); names are imported lazily
so that `forklane.propagation` (used inside services) does not even pull in httpx, and
importing `forklane` never loads a server stack (those are the `proxy`, `controlplane` and
`cli` extras).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from forklane.client import AsyncClient, Client, RetryPolicy, SandboxHandle
    from forklane.controlplane.wire import (
        Condition,
        ForkSpec,
        HeaderMatchSpec,
        MatchSpec,
        Metadata,
        MirrorSpec,
        ProxyInfo,
        RouteGroup,
        RouteGroupSpec,
        Sandbox,
        SandboxSpec,
        ServiceResource,
        ServiceSpec,
        Split,
        SplitDestinationSpec,
        SplitSpec,
        StickySpec,
        TimeoutsSpec,
        TtlSpec,
    )
    from forklane.errors import (
        ConfigError,
        Conflict,
        Expired,
        Forbidden,
        ForklaneError,
        Invalid,
        NotFound,
        SandboxFailed,
        Unauthorized,
        Unavailable,
        WaitTimeout,
    )

_CLIENT = ("AsyncClient", "Client", "RetryPolicy", "SandboxHandle")
_MODELS = (
    "Condition", "ForkSpec", "HeaderMatchSpec", "MatchSpec", "Metadata", "MirrorSpec",
    "ProxyInfo", "RouteGroup", "RouteGroupSpec", "Sandbox", "SandboxSpec", "ServiceResource",
    "ServiceSpec", "Split", "SplitDestinationSpec", "SplitSpec", "StickySpec", "TimeoutsSpec",
    "TtlSpec",
)  # fmt: skip
_ERRORS = (
    "ConfigError", "Conflict", "Expired", "Forbidden", "ForklaneError", "Invalid", "NotFound",
    "SandboxFailed", "Unauthorized", "Unavailable", "WaitTimeout",
)  # fmt: skip

__all__ = [
    "AsyncClient",
    "Client",
    "Condition",
    "ConfigError",
    "Conflict",
    "Expired",
    "Forbidden",
    "ForkSpec",
    "ForklaneError",
    "HeaderMatchSpec",
    "Invalid",
    "MatchSpec",
    "Metadata",
    "MirrorSpec",
    "NotFound",
    "ProxyInfo",
    "RetryPolicy",
    "RouteGroup",
    "RouteGroupSpec",
    "Sandbox",
    "SandboxFailed",
    "SandboxHandle",
    "SandboxSpec",
    "ServiceResource",
    "ServiceSpec",
    "Split",
    "SplitDestinationSpec",
    "SplitSpec",
    "StickySpec",
    "TimeoutsSpec",
    "TtlSpec",
    "Unauthorized",
    "Unavailable",
    "WaitTimeout",
]

_HOME = {
    **dict.fromkeys(_CLIENT, "forklane.client"),
    **dict.fromkeys(_MODELS, "forklane.controlplane.wire"),
    **dict.fromkeys(_ERRORS, "forklane.errors"),
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'forklane' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
