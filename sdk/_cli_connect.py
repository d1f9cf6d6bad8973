"""`forklane connect`: serve a sandbox's fork from this machine until Ctrl-C.

Flags: `--sandbox NAME`, `--service NAME --to HOST:PORT` (repeatable, paired in order) or
`--service NAME=HOST:PORT`, `--env-file PATH`, `--outbound URL`, `--proxy-port N`. What
cannot work is one line and an exit code: unknown sandbox (3, also once it is deleted), not
the owner (5), a service the sandbox does not fork (6), nothing listening on `--to` or the
control plane unreachable (7), already connected from elsewhere (4). Ctrl-C (or SIGTERM)
withdraws the route, waits for the control plane to confirm, and exits 0.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from forklane._cli_common import UsageProblem, globals_of
from forklane.config import resolve_config

__all__ = ["connect", "pair_targets"]

DEFAULT_OUTBOUND = "http://127.0.0.1:15001"


def pair_targets(services: list[str], to: list[str]) -> list[tuple[str, str]]:
    """(service, HOST:PORT) pairs: `NAME=HOST:PORT` alone, or bare names paired in order with
    the `--to` values."""
    bare = [s for s in services if "=" not in s]
    if len(bare) != len(to):
        raise UsageProblem(f"{len(bare)} --service without =HOST:PORT but {len(to)} --to: give "
                           "one --to per --service NAME (or write --service NAME=HOST:PORT)")
    pairs: list[tuple[str, str]] = []
    rest = iter(to)
    for value in services:
        name, sep, address = value.partition("=")
        pairs.append((name.strip(), address.strip() if sep else next(rest)))
    names = [n for n, _ in pairs]
    if any(not n for n in names):
        raise UsageProblem("--service needs a name")
    if len(set(names)) != len(names):
        raise UsageProblem("a service is given twice")
    return pairs


def connect(
    ctx: typer.Context,
    sandbox: Annotated[str, typer.Option("--sandbox", metavar="NAME",
                                         help="the sandbox whose forks this machine serves")],
    service: Annotated[list[str], typer.Option(
        "--service", metavar="NAME[=HOST:PORT]",
        help="a service the sandbox forks (repeatable); with =HOST:PORT instead of --to")],
    to: Annotated[list[str] | None, typer.Option(
        "--to", metavar="HOST:PORT", help="where its requests go here (one per bare --service)",
    )] = None,
    env_file: Annotated[Path | None, typer.Option(
        "--env-file", metavar="PATH",
        help="write HTTP_PROXY, FORKLANE_ROUTING_KEY … for IDE run configurations")] = None,
    outbound: Annotated[str, typer.Option(
        "--outbound", metavar="URL",
        help="the environment's outbound address the local proxy sends your service's calls "
             "to (a forklane proxy's outbound listener, e.g. through kubectl port-forward)",
    )] = DEFAULT_OUTBOUND,
    proxy_port: Annotated[int, typer.Option(
        "--proxy-port", min=0, max=65535, metavar="PORT",
        help="port of the local HTTP_PROXY (0: any free one)",
    )] = 0,
) -> None:
    """Serve a sandbox's fork from this machine: requests carrying its key reach --to.

    The tunnel is outbound (a WebSocket to the control plane), so nothing needs to reach this
    machine. Also runs an HTTP proxy on 127.0.0.1 (printed as HTTP_PROXY=…) that adds the key
    to your service's own calls. Short drops reconnect; Ctrl-C withdraws the route and exits.
    """
    from forklane.connect import Connector, Target, parse_address, parse_outbound

    targets = []
    for name, address in pair_targets(service, to or []):
        try:
            host, port = parse_address(address)
        except ValueError as exc:
            raise UsageProblem(f"--to for {name}: {exc}") from None
        targets.append(Target(name, host, port))
    g = globals_of(ctx)
    config = resolve_config(url=g.url, token=g.token, context=g.context)

    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    connector = Connector(url=config.url, token=config.token, sandbox=sandbox, targets=targets,
                          say=say, outbound=parse_outbound(outbound), proxy_port=proxy_port,
                          env_file=env_file)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await connector.run(stop)

    asyncio.run(main())
