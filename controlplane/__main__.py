"""`python -m forklane.controlplane serve`: run one control-plane replica until SIGTERM or SIGINT.

Flags override the `FORKLANE_*` environment; bad values exit 2 with a message, never a
traceback. Prints exactly one line on stdout once the API and the push server are bound:
`forklane controlplane listening on http://HOST:PORT (grpc HOST:PORT, store …)`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from typing import Any

from pydantic import ValidationError

from forklane.controlplane.settings import Settings
from forklane.controlplane.store.base import StoreError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m forklane.controlplane", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the REST API, the reconciler and the push server")
    serve.add_argument("--listen", metavar="HOST:PORT", help="REST API address (port 0: any)")
    serve.add_argument("--grpc", metavar="HOST:PORT", help="snapshot push address (port 0: any)")
    serve.add_argument("--store", metavar="URL", help="sqlite | sqlite:PATH | postgresql://…")
    serve.add_argument("--data-dir", metavar="DIR", help="directory of the SQLite store")
    serve.add_argument(
        "--no-auth", action="store_true", help="disable bearer tokens (local demo only!)"
    )
    serve.add_argument(
        "--carriers", metavar="KIND:NAME,…",
        help="where proxies read the routing key, in priority order (default: "
        "header:x-forklane-routing-key,baggage:forklane-routing-key)",
    )
    return parser


async def _serve(settings: Settings) -> int:
    from forklane.controlplane.server import ControlPlane

    plane = ControlPlane(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await plane.start()
    except (StoreError, OSError) as exc:
        print(f"forklane controlplane: cannot start: {exc}", file=sys.stderr)
        return 1
    try:
        print(plane.banner(), flush=True)
        await stop.wait()
    finally:
        await plane.aclose()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides: dict[str, Any] = {}
    for flag in ("listen", "grpc", "store", "data_dir", "carriers"):
        value = getattr(args, flag)
        if value is not None:
            overrides[flag] = value
    if args.no_auth:
        overrides["auth"] = False
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "settings"
            print(f"forklane controlplane: {where}: {err['msg']}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if not settings.auth:
        logging.getLogger("forklane.controlplane").warning(
            "auth is disabled: every caller is admin (local demo only)"
        )
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
