"""`forklane context list|use|set` and `forklane login`: named contexts in the config file.

Tokens are never printed (lists show whether one is set); `login` saves a context only after
the control plane accepted the token, unless `--no-verify`.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from forklane._cli_common import (
    NameArg,
    OutputOpt,
    UsageProblem,
    err_console,
    out_console,
)
from forklane._cli_render import (
    CONTEXT_COLUMNS,
    Format,
    contexts_document,
    emit,
)
from forklane.client import Client
from forklane.config import (
    ConfigFile,
    Context,
    config_path,
    load_config_file,
    normalize_url,
    resolve_config,
    save_config_file,
)

__all__ = ["context_app", "login"]

context_app = typer.Typer(help="Named control-plane contexts in the config file.")


# --- contexts, login -----------------------------------------------------------------------------


def _config() -> ConfigFile:
    return load_config_file(config_path())


@context_app.command("list")
def context_list(output: OutputOpt = Format.table) -> None:
    """List contexts; * marks the current one."""
    cfg = _config()
    rows = [(c.name == cfg.current_context, c) for c in cfg.contexts]
    emit(
        output,
        out_console(),
        sys.stdout,
        columns=CONTEXT_COLUMNS,
        rows=rows,
        doc=contexts_document(cfg),
        empty=f"no contexts in {cfg.path}",
    )


@context_app.command("use")
def context_use(name: NameArg) -> None:
    """Make NAME the current context."""
    save_config_file(_config().with_current(name))
    err_console().print(f"current context is now {name}")


@context_app.command("set")
def context_set(
    name: NameArg,
    url: Annotated[str | None, typer.Option("--url", metavar="URL")] = None,
    token: Annotated[str | None, typer.Option("--token", metavar="TOKEN")] = None,
    use: Annotated[bool, typer.Option("--use", help="also make it current")] = False,
) -> None:
    """Create or change context NAME."""
    cfg = _config()
    existing = cfg.find(name)
    if url is not None:
        ctx_url = normalize_url(url)
    elif existing is not None:
        ctx_url = existing.url
    else:
        raise UsageProblem(f"context {name!r} is new: --url is required")
    ctx_token = token if token is not None else (existing.token if existing else None)
    cfg = cfg.with_context(Context(name, ctx_url, ctx_token or None))
    if use or cfg.current_context is None:
        cfg = cfg.with_current(name)
    save_config_file(cfg)
    err_console().print(f"context {name} saved in {cfg.path}")


def login(
    url: Annotated[str, typer.Option("--url", metavar="URL", help="control-plane URL")],
    token: Annotated[
        str | None,
        typer.Option(
            "--token", metavar="TOKEN",
            help="bearer token; when omitted, read from stdin (one line) or prompted for",
        ),
    ] = None,
    name: Annotated[
        str, typer.Option("--context", metavar="NAME", help="context name to save")
    ] = "default",
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="check the token first")
    ] = True,
) -> None:
    """Save URL and token as a context, make it current (checking the token first).

    Without --token the token comes from stdin when it is not a terminal (`forklane login
    --url URL <<< "$TOKEN"`), so it never appears on a command line or in `ps`."""
    url = normalize_url(url)
    if token is None:
        token = _token_from_stdin() if sys.stdin and not sys.stdin.isatty() else None
    if token is None:
        token = typer.prompt("token", hide_input=True)
    if verify:
        with Client(config=resolve_config(url=url, token=token, env={})) as client:
            client.sandboxes.list()
    cfg = _config().with_context(Context(name, url, token or None))
    save_config_file(cfg.with_current(name))
    err_console().print(f"logged in to {url} as context {name}")


def _token_from_stdin() -> str:
    """The first line of stdin, stripped; a usage error when there is none."""
    line = sys.stdin.readline().strip()
    if not line:
        raise UsageProblem("no token on stdin: pipe one in, or give --token")
    return line
