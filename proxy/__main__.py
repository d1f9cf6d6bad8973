"""`python -m forklane.proxy run | capture | explain | schema` — the sidecar's own command line.

Kept on argparse so the sidecar process loads no CLI framework; `forklane proxy …` execs this.
Exit codes: 0 ok, 1 runtime error, 2 usage or invalid configuration.
"""

from __future__ import annotations

import argparse
import errno
import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["main"]


_OFF = -1  # "--admin-port off": distinct from "not given" (None) until settings are built


def _port(text: str) -> int:
    if text in ("off", "none", "-"):
        return _OFF
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: a port number 0..65535, or 'off'")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="forklane proxy", description="forklane sidecar proxy")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run", help="run the sidecar",
        description="Run the sidecar. Every flag is also an environment variable: "
        "--max-header-bytes is FORKLANE_MAX_HEADER_BYTES.",
    )
    src = run.add_mutually_exclusive_group()
    src.add_argument("--config", type=Path, help="static routing file (YAML/JSON), hot-reloaded")
    src.add_argument("--controlplane", metavar="HOST:PORT", help="follow a control plane (gRPC)")
    run.add_argument("--token", "--controlplane-token", dest="controlplane_token", metavar="TOKEN",
                     help="proxy token for the control plane (visible in ps: prefer "
                     "FORKLANE_CONTROLPLANE_TOKEN or --controlplane-token-file)")
    run.add_argument("--port", "--outbound-port", dest="outbound_port", type=_port,
                     metavar="PORT", help="outbound listener (default 15001; 'off')")
    run.add_argument("--inbound-port", type=_port, metavar="PORT",
                     help="inbound listener (default 15006 with --service and --local-app; 'off')")
    run.add_argument("--admin-port", type=_port, metavar="PORT",
                     help="admin listener (default 15000; 'off')")
    from forklane.proxy.settings import ProxySettings, add_setting_flags

    add_setting_flags(
        run, ProxySettings,
        skip=("config", "controlplane", "controlplane_token", "outbound_port", "inbound_port",
              "admin_port"),
        metavars={"local_app": "HOST:PORT", "bind": "ADDRESS", "service": "NAME"},
    )  # fmt: skip
    # Short spellings of two capture settings (the generated --capture-… flags also work).
    run.add_argument("--detect-timeout", dest="capture_detect_timeout", metavar="SECONDS",
                     help="same as --capture-detect-timeout")
    run.add_argument("--opaque-ports", dest="capture_opaque_ports", metavar="P1,P2",
                     help="same as --capture-opaque-ports")
    run.add_argument("--worker-child", action="store_true", help=argparse.SUPPRESS)

    ex = sub.add_parser("explain", help="show where a described request would go")
    ex.add_argument("--config", type=Path, required=True)
    ex.add_argument("--listener", choices=["outbound", "inbound"], default="outbound")
    ex.add_argument("--service", help="local service (inbound)")
    ex.add_argument("--local-app", default="127.0.0.1:8080", help="local app (inbound)")
    ex.add_argument("--host", default="", help="Host / :authority of the request")
    ex.add_argument("--method", default="GET")
    ex.add_argument("--path", default="/")
    ex.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'")
    ex.add_argument("-o", "--output", choices=["text", "json"], default="text")

    sub.add_parser("schema", help="print the routing snapshot JSON Schema")

    from forklane.proxy.capture.command import add_arguments

    cap = sub.add_parser(
        "capture", help="install the nat rules that send this network namespace's TCP "
        "traffic through the sidecar (run as root, once per pod)")
    add_arguments(cap)
    return p


def _settings_from(args: argparse.Namespace) -> Any:
    from pydantic import ValidationError

    from forklane.proxy.settings import ProxySettings, UsageError

    fields = set(ProxySettings.model_fields)
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    for name in ("outbound_port", "inbound_port", "admin_port"):
        if given.get(name) == _OFF:
            given[name] = None
    try:
        settings = ProxySettings(**given)
    except ValidationError as exc:
        from forklane.proxy.loader import format_validation_error

        raise UsageError(
            f"forklane proxy: invalid settings: {format_validation_error(exc)}"
        ) from None
    if "inbound_port" not in given and not (settings.service and settings.local_app):
        # no local app known (flags or FORKLANE_* environment): no inbound listener by default
        settings = settings.model_copy(update={"inbound_port": None})
    return settings


def _run_workers(argv: list[str], workers: int) -> int:
    """Start `workers` processes sharing the ports, forward signals, wait for all."""
    children = [
        subprocess.Popen([sys.executable, "-P", "-m", "forklane.proxy", *argv, "--worker-child"])
        for _ in range(workers)
    ]

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    codes = [child.wait() for child in children]
    return max(codes, default=0)


def _explain(args: argparse.Namespace) -> int:
    import random

    from forklane.proxy.admin import explain_request
    from forklane.proxy.loader import load_snapshot_file
    from forklane.proxy.state import TableHolder
    from forklane.proxy.table import ConfigError, LocalIdentity

    headers: list[list[str]] = []  # repeated fields stay repeated, as on the wire
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            print(f"forklane proxy explain: header {item!r}: expected 'NAME: VALUE'", file=sys.stderr)
            return 2
        headers.append([name.strip().lower(), value.strip()])
    hosts = [v for n, v in headers if n == "host"]
    local = LocalIdentity(args.service, args.local_app) if args.service else None
    holder = TableHolder(local)
    try:
        holder.apply(load_snapshot_file(args.config), source=str(args.config))
    except ConfigError as exc:
        print(f"forklane proxy explain: {exc}", file=sys.stderr)
        return 2
    spec = {"listener": args.listener, "method": args.method, "path": args.path,
            "host": args.host or (hosts[0] if hosts else ""), "headers": headers}
    status, body = explain_request(holder, spec, random.Random(0).random)
    if status != 200:
        print(f"forklane proxy explain: {body.get('error')}", file=sys.stderr)
        return 2
    if args.output == "json":
        print(json.dumps(body, indent=2))
    else:
        dest = body["destination"] or f"local answer {body['status']} ({body['error']})"
        print(f"{body['kind']:<9} → {dest}")
        if body["endpoints"]:
            print(f"endpoints  {', '.join(body['endpoints'])}")
        print(f"rule       {body['rule']}")
        print(f"reason     {body['reason']}")
        print(f"key        {body['routing_key'] or '-'}"
              + (f" (from {body['carrier']})" if body["carrier"] else "")
              + (" — carriers disagreed, key ignored" if body["conflict"] else ""))
        if body["fallback"]:
            print(f"fallback   {body['fallback']}")
        if body["mirrors"]:
            print(f"mirrors    {', '.join(body['mirrors'])}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.command == "schema":
        from forklane.proxy.schema import RoutingSnapshot

        print(json.dumps(RoutingSnapshot.model_json_schema(), indent=2))
        return 0
    if args.command == "explain":
        return _explain(args)
    if args.command == "capture":
        from forklane.proxy.capture.command import run as capture

        return capture(args)
    from forklane.proxy.settings import UsageError

    try:
        settings = _settings_from(args)
        if settings.workers > 1 and not args.worker_child:
            return _run_workers(argv, settings.workers)
        if settings.controlplane is not None:
            from forklane.proxy.grpclog import route_native_logs

            route_native_logs()  # gRPC's C-core lines go through our log format
        from forklane.proxy import hotpath

        try:
            mode = hotpath.select(settings.hot_path)  # before any hot-path module loads
        except hotpath.HotPathError as exc:
            raise UsageError(f"forklane proxy: {exc}") from None
        from forklane.proxy.run import run

        return run(settings, mode)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        print(f"forklane proxy: {address_in_use(exc)}", file=sys.stderr)
        return 2


def address_in_use(exc: OSError) -> str:
    """One line naming the address another process holds, from the bind error."""
    found = re.search(r"\('([^']*)', (\d+)", str(exc))
    where = f"{found.group(1)}:{found.group(2)}" if found else "the address"
    port = found.group(2) if found else "?"
    return (f"cannot listen on {where}: port {port} is already in use by another process "
            "(choose another with --port/--inbound-port/--admin-port)")


if __name__ == "__main__":
    sys.exit(main())
