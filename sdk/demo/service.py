"""The demo's sample service: one small aiohttp app, run as `python -m forklane.demo.service`.

`frontend`, `catalog` and `pricing` are the same program with different flags. A service
with `--next NAME` answers `GET /` by calling NAME through its sidecar's outbound listener
(`Host: NAME`) and adding its own hop in front of the answer; the last one (`pricing`) makes
up the price. The answer is JSON: `{"hops": [{"service", "version"}, ...], "price": float}`.

Protocol with the process that starts it (`forklane.demo`):
- once bound (port 0), the service prints one line on stdout:
  `forklane demo service NAME VERSION listening on 127.0.0.1:PORT`;
- a service with `--next` then reads its sidecar's outbound address from stdin, one line
  `upstream HOST:PORT` (the sidecar can only start once the app's port is known);
- end of stdin means the demo is gone: the service exits, so it can never outlive it.

The routing key is carried from the incoming request to the outgoing call by the SDK's
aiohttp helpers (`forklane.propagation.aiohttp`), exactly as a real service would do it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, web

from forklane.demo._lines import READY_PREFIX, UPSTREAM_PREFIX
from forklane.propagation.aiohttp import client_middleware, server_middleware

__all__ = ["main"]

_UPSTREAM: web.AppKey[list[str]] = web.AppKey("upstream", list)
_SESSION: web.AppKey[ClientSession] = web.AppKey("session", ClientSession)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m forklane.demo.service", description=__doc__)
    p.add_argument("--name", required=True, help="the service's name (also its Host)")
    p.add_argument("--version", required=True, help="shown in every answer, e.g. v1")
    p.add_argument("--next", dest="next_service", help="the service to call, through the sidecar")
    p.add_argument("--price", type=float, default=100.0, help="the price a leaf answers")
    p.add_argument("--discount", type=float, default=0.0, help="percent off (the fork's change)")
    return p


def build_app(args: argparse.Namespace) -> web.Application:
    """The aiohttp app; `app[_UPSTREAM]` is filled in once the sidecar's address is known."""
    hop = {"service": args.name, "version": args.version}
    app = web.Application(middlewares=[server_middleware()])
    app[_UPSTREAM] = []

    answer: dict[str, Any] = {
        "hops": [hop],
        "price": round(args.price * (100.0 - args.discount) / 100.0, 2),
    }
    if args.discount:
        answer["note"] = f"{args.discount:g}% off"
    leaf_body = json.dumps(answer)

    async def leaf(request: web.Request) -> web.Response:
        return web.Response(text=leaf_body, content_type="application/json")

    async def relay(request: web.Request) -> web.Response:
        if not app[_UPSTREAM]:
            return web.json_response({"error": f"{args.name}: sidecar not known yet"}, status=503)
        url = f"http://{app[_UPSTREAM][0]}/"
        try:
            async with app[_SESSION].get(url, headers={"Host": args.next_service}) as resp:
                text = await resp.text()
                if resp.status != 200:
                    return web.json_response(
                        {"error": f"{args.name} → {args.next_service}: {resp.status} "
                         f"{_reason(resp.headers.get('x-forklane-error', ''), text)}"},
                        status=502,
                    )  # fmt: skip
                downstream = json.loads(text)
        except (ClientError, TimeoutError, ValueError) as exc:
            return web.json_response(
                {"error": f"{args.name} → {args.next_service}: {type(exc).__name__} {exc}"},
                status=502,
            )
        downstream["hops"] = [hop, *downstream.get("hops", [])]
        return web.json_response(downstream)

    app.router.add_get("/", relay if args.next_service else leaf)

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        app[_SESSION] = ClientSession(
            middlewares=(client_middleware,), timeout=ClientTimeout(total=5)
        )
        yield
        await app[_SESSION].close()

    app.cleanup_ctx.append(session_ctx)
    return app


def _reason(header: str, body: str) -> str:
    """Why a call failed: the sidecar's reason header, else the `error` of a demo answer."""
    if header:
        return header
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body.strip()[:120]


async def _serve(args: argparse.Namespace) -> int:
    app = build_app(args)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    print(f"{READY_PREFIX} {args.name} {args.version} listening on {host}:{port}", flush=True)

    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    try:
        while line := (await stdin.readline()).decode().strip():
            if line.startswith(UPSTREAM_PREFIX):
                app[_UPSTREAM][:] = [line.removeprefix(UPSTREAM_PREFIX)]
        # a blank line or end of input: the demo is done (or gone)
    finally:
        await runner.cleanup()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(_serve(args))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
