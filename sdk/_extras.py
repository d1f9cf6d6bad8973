"""Which optional parts of forklane are installed, and the one line that says what is missing.

`pip install forklane` is the SDK and the propagation helpers only; the components and the
command line are extras (`forklane[proxy]`, `forklane[controlplane]`, `forklane[cli]`,
`forklane[all]`). This module only looks for the extras' import names (`find_spec` imports
nothing), so it is safe to call before any of them is loaded.
"""

from __future__ import annotations

from importlib.util import find_spec

__all__ = ["EXTRAS", "install_hint", "missing"]

# extra -> import names it provides (the ones whose absence breaks that part)
EXTRAS: dict[str, tuple[str, ...]] = {
    "cli": ("typer", "rich", "jsonpath_ng", "aiohttp"),
    "proxy": ("httptools", "grpc", "pydantic_settings", "prometheus_client"),
    "controlplane": ("aiohttp", "grpc", "pydantic_settings", "aiosqlite", "asyncpg"),
    "nats": ("nats",),
    "rabbitmq": ("aio_pika",),
    "kafka": ("aiokafka",),
}


def missing(extra: str) -> list[str]:
    """Import names of `extra` that are not installed (empty when it is complete)."""
    return [name for name in EXTRAS[extra] if find_spec(name) is None]


def install_hint(extra: str, what: str) -> str:
    """`forklane proxy needs the 'proxy' extra (missing: grpc): pip install 'forklane[proxy]'`."""
    absent = ", ".join(missing(extra)) or "?"
    return f"{what} needs the '{extra}' extra (missing: {absent}): pip install 'forklane[{extra}]'"
