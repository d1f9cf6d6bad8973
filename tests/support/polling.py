"""Waiting for a condition with a deadline: the one sanctioned way tests wait."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def eventually(check: Callable[[], Awaitable[bool] | bool], within: float = 10.0,
                     what: str = "condition") -> None:
    """Poll `check` every 20 ms until it is true; fail with `what` after `within` seconds.

    For state that lives in another process (a proxy's loaded version, a metric), polling
    is the only observation there is; the deadline keeps a broken system from hanging."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {within} s")
        await asyncio.sleep(0.02)
