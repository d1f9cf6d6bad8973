"""`python -m forklane.controlplane serve`: run one control-plane replica until SIGTERM or SIGINT.

Flags override the `FORKLANE_*` environment; bad values exit 2 with a message, never a
traceback, and so does an address another process holds (one line naming the port). Prints
exactly one line on stdout once the API and the push server are bound:
`forklane controlplane listening on http://HOST:PORT (grpc HOST:PORT, store …)`.

Exit codes: 0 stopped by SIGTERM/SIGINT, 1 could not start (e.g. the store), 2 usage, an
invalid setting, or a port in use.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from forklane.controlplane.errors import AddressInUse
from forklane.controlplane.settings import Settings
from forklane.controlplane.store.base import StoreError
from forklane.proxy.grpclog import route_native_logs

__all__ = ["main"]


# Settings that are not flags: a secret on a command line is visible to every user in ps.
ENV_ONLY = ("admin_token", "routing_key_secrets")


def _parser() -> argparse.ArgumentParser:
    from forklane.proxy.settings import add_setting_flags

    parser = argparse.ArgumentParser(
        prog="forklane controlplane", description="forklane control plane"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve", help="run the REST API, the reconciler and the push server",
        description="Run one control-plane replica. Every flag is also an environment "
        "variable (--reconcile-interval is FORKLANE_RECONCILE_INTERVAL); the admin token is "
        "FORKLANE_ADMIN_TOKEN only.",
    )
    serve.add_argument(
        "--no-auth", dest="auth", action="store_false", default=None,
        help="disable bearer tokens (local demo only!)",
    )
    add_setting_flags(
        serve, Settings, skip=(*ENV_ONLY, "auth"),
        metavars={"listen": "HOST:PORT", "grpc": "HOST:PORT", "store": "URL",
                  "data_dir": "DIR", "carriers": "KIND:NAME,…"},
    )  # fmt: skip
    inject = sub.add_parser(
        "inject", help="add the sidecar to manifests offline (like the webhook), print them")
    inject.add_argument("-f", "--filename", required=True, metavar="FILE",
                        help="multi-document YAML; '-' reads standard input")
    inject.add_argument("-n", "--namespace", dest="default_namespace",
                        help="namespace of documents that name none (default: default)")
    inject.add_argument("--image", dest="sidecar_image", help="sidecar image")
    inject.add_argument("--controlplane", dest="sidecar_controlplane", metavar="HOST:PORT",
                        help="control-plane address the sidecar dials")
    inject.add_argument("--capture", dest="sidecar_capture", choices=["iptables", "explicit"],
                        help="default traffic capture (pods may override by annotation)")
    return parser


def _inject(args: argparse.Namespace, settings: Settings) -> int:
    from forklane.controlplane.kubernetes.adapters import sidecar_template
    from forklane.controlplane.kubernetes.manifests import ManifestError, inject_manifests

    try:
        text = sys.stdin.read() if args.filename == "-" else Path(args.filename).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        print(f"forklane inject: cannot read {args.filename}: {exc}", file=sys.stderr)
        return 2
    try:
        out = inject_manifests(text, sidecar_template(settings),
                               namespace=args.default_namespace or "default", source=args.filename)
    except ManifestError as exc:
        print(f"forklane inject: {exc}", file=sys.stderr)
        return 6
    sys.stdout.write(out)
    return 0


async def _serve(settings: Settings) -> int:
    from forklane.controlplane.server import ControlPlane

    plane = ControlPlane(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await plane.start()
    except AddressInUse as exc:
        print(f"forklane controlplane: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            print(f"forklane controlplane: {_in_use(exc, settings.listen)}", file=sys.stderr)
            return 2
        print(f"forklane controlplane: cannot start: {exc}", file=sys.stderr)
        return 1
    except StoreError as exc:
        print(f"forklane controlplane: cannot start: {exc}", file=sys.stderr)
        return 1
    try:
        print(plane.banner(), flush=True)
        await stop.wait()
    finally:
        await plane.aclose()
    return 0


def _in_use(exc: OSError, listen: str) -> str:
    return (f"cannot listen on {listen} (REST API): the port is already in use by another "
            "process (choose another with --listen)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    fields = set(Settings.model_fields)
    overrides: dict[str, Any] = {
        k: v for k, v in vars(args).items() if k in fields and v is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "settings"
            print(f"forklane controlplane: {where}: {err['msg']}", file=sys.stderr)
        return 2
    if args.command == "inject":
        return _inject(args, settings)
    route_native_logs()  # gRPC's C-core lines go through the same log format
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
