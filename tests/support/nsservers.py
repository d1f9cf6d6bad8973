"""Servers for the network-namespace tests, one process per namespace (stdlib only).

    python -m tests.support.nsservers --http 198.18.0.2:8080=baseline --tls 198.18.0.2:8443=secure \
        --cert C --key K --banner 198.18.0.2:2525 --echo 0.0.0.0:9090

- `--http ADDR=NAME`: HTTP/1.1 with keep-alive; every answer is JSON naming the server, the
  peer address and the request head exactly as received (so a test sees what a proxy added);
- `--tls ADDR=NAME`: the same over TLS (`--cert`, `--key`);
- `--banner ADDR`: server-first, like SMTP: `220 banner` on connect, then `250 LINE` per line;
- `--echo ADDR`: echoes; after the client's EOF sends `sha256:<digest of all received>` and
  closes (a half-close check).
Prints `ready` once every listener is up. `[v6]:port` addresses work too.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import ssl
import sys


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def http_handler(name: str):  # type: ignore[no-untyped-def]
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    key, _, value = line.partition(b":")
                    if key.strip().lower() == b"content-length":
                        length = int(value.strip())
                body = await reader.readexactly(length) if length else b""
                answer = json.dumps({"server": name, "peer": peer[0],
                                     "head": head.decode("latin-1"), "body_len": len(body)})
                data = answer.encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"x-server: " + name.encode() + b"\r\n"
                             b"content-length: %d\r\n\r\n" % len(data) + data)
                await writer.drain()
        except ConnectionError:
            return
        finally:
            writer.close()

    return handle


async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        writer.write(b"220 banner\r\n")
        await writer.drain()
        while line := await reader.readline():
            writer.write(b"250 " + line)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    digest = hashlib.sha256()
    try:
        while data := await reader.read(65536):
            digest.update(data)
            writer.write(data)
            await writer.drain()
        writer.write(b"sha256:" + digest.hexdigest().encode())
        await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--http", action="append", default=[])
    p.add_argument("--tls", action="append", default=[])
    p.add_argument("--banner", action="append", default=[])
    p.add_argument("--echo", action="append", default=[])
    p.add_argument("--cert")
    p.add_argument("--key")
    args = p.parse_args(argv)
    servers = []
    for spec in args.http:
        addr, _, name = spec.partition("=")
        host, port = _split(addr)
        servers.append(await asyncio.start_server(http_handler(name), host, port))
    if args.tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
        for spec in args.tls:
            addr, _, name = spec.partition("=")
            host, port = _split(addr)
            servers.append(await asyncio.start_server(http_handler(name), host, port,
                                                      ssl=context))
    for addr in args.banner:
        servers.append(await asyncio.start_server(banner, *_split(addr)))
    for addr in args.echo:
        servers.append(await asyncio.start_server(echo, *_split(addr)))
    print("ready", flush=True)
    await asyncio.Event().wait()  # until the test stops this process


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1:]))
    except KeyboardInterrupt:
        pass
