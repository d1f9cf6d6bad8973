"""`forklane demo`: control plane, three sample services and their sidecars on loopback,
a sandbox forking one of them, and requests that show where the routing key takes them.

Layout: `_stack` starts the processes, `_supervisor` owns and stops them, `_trip` reads and
checks what each request went through, `_run` tells the story; `service` is the sample app
(`python -m forklane.demo.service`). Names are imported lazily so that the sample services,
which import this package, do not load the client, httpx and rich.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from forklane.demo._run import run_demo
    from forklane.demo._supervisor import DemoFailed

__all__ = ["DemoFailed", "run_demo"]

_HOME = {"DemoFailed": "forklane.demo._supervisor", "run_demo": "forklane.demo._run"}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'forklane.demo' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name]), name)
