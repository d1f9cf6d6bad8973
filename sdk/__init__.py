"""forklane SDK: REST clients, propagation helpers for services, and the `forklane` CLI.

    from forklane import Client
    with Client() as client, client.sandbox(forks=["pricing=127.0.0.1:9000"]) as sb:
        requests.get("http://frontend/", headers=sb.headers)

The client names are imported lazily so that `forklane.propagation` (used inside services) does
not pull in httpx and the wire models.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from forklane.client import AsyncClient, Client, RetryPolicy, SandboxHandle
    from forklane.errors import (
        ConfigError,
        Conflict,
        Forbidden,
        ForklaneError,
        Invalid,
        NotFound,
        SandboxFailed,
        Unauthorized,
        Unavailable,
        WaitTimeout,
    )

__all__ = [
    "AsyncClient",
    "Client",
    "ConfigError",
    "Conflict",
    "Forbidden",
    "ForklaneError",
    "Invalid",
    "NotFound",
    "RetryPolicy",
    "SandboxFailed",
    "SandboxHandle",
    "Unauthorized",
    "Unavailable",
    "WaitTimeout",
]

_HOME = {
    "AsyncClient": "forklane.client",
    "Client": "forklane.client",
    "RetryPolicy": "forklane.client",
    "SandboxHandle": "forklane.client",
}


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'sdk' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME.get(name, "forklane.errors")), name)
