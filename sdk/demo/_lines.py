"""The line protocol between the demo and its sample services (shared by both sides).

Kept apart so the services import neither the client nor rich, and the demo not aiohttp.
"""

from __future__ import annotations

__all__ = ["READY_PREFIX", "UPSTREAM_PREFIX"]

READY_PREFIX = "forklane demo service"  # + " NAME VERSION listening on HOST:PORT"
UPSTREAM_PREFIX = "upstream "  # + "HOST:PORT", the sidecar's outbound listener
