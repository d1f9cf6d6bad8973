"""`forklane`: the command line for sandboxes, route groups, splits, services and proxies.

Every command talks to the control plane through `forklane.client.Client`; the CLI adds parsing
of flags, output (`-o table|json|yaml`), a spinner while waiting, and one translation of
errors into a single line on stderr and an exit code:

    0  ok
    1  error (anything not listed below)
    2  usage: bad command line or flag value
    3  not found
    4  conflict (name taken, or changed concurrently)
    5  unauthorized or forbidden
    6  invalid: the control plane rejected the resource
    7  unavailable: control plane or proxy unreachable
    8  timeout: waited for Ready and it did not come

    130  interrupted (Ctrl-C)

Usage errors (exit 2) are one line too. Tracebacks are printed only with `--debug`. `forklane proxy ...` and `forklane controlplane
...` exec `python -m forklane.proxy` / `python -m forklane.controlplane` with the arguments untouched, so the
sidecar process never loads the CLI's dependencies and the SDK never imports the proxy.

The commands live in `sdk._cli_resources`, `sdk._cli_explain`, `sdk._cli_contexts`,
`sdk._cli_tap` and `sdk._cli_connect`;
this module assembles them and owns the translation of errors into exit codes.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence
from typing import Annotated, NoReturn

import typer

# typer vendors click (0.29+): its exceptions are these, not the `click` package's
from typer._click import exceptions as click

from forklane._cli_common import (
    Globals,
    OutputOpt,
    open_client,
    out_console,
)
from forklane._cli_connect import connect
from forklane._cli_contexts import context_app, login
from forklane._cli_explain import explain
from forklane._cli_kubectl import register
from forklane._cli_render import (
    PROXY_COLUMNS,
    Format,
    emit,
)
from forklane._cli_resources import routegroup_app, sandbox_app, service_app, split_app
from forklane._cli_tap import tap
from forklane._entry import exec_component
from forklane.config import normalize_url
from forklane.controlplane.wire import API_VERSION, dump
from forklane.errors import (
    ConfigError,
    Conflict,
    Forbidden,
    ForklaneError,
    Invalid,
    NotFound,
    SandboxFailed,
    Unauthorized,
    Unavailable,
    WaitTimeout,
)

__all__ = ["EXIT_CODES", "app", "main"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
EXIT_CODES: dict[type[ForklaneError], int] = {
    NotFound: 3,
    Conflict: 4,
    Unauthorized: 5,
    Forbidden: 5,
    Invalid: 6,
    Unavailable: 7,
    WaitTimeout: 8,
    SandboxFailed: 9,
}

EPILOG = """Exit codes:

\b
  0  ok                        5  unauthorized or forbidden
  1  error                     6  invalid (e.g. an unknown service, a bad field)
  2  usage                     7  unavailable (control plane or proxy unreachable)
  3  not found                 8  timeout (waiting for Ready)
  4  conflict                  9  failed while waiting (waiting cannot help)
                               130 interrupted

Configuration: --url/--token/--context, else FORKLANE_URL, FORKLANE_TOKEN, FORKLANE_CONTEXT,
else the current context of ~/.config/forklane/config.yaml (its path: FORKLANE_CLIENT_CONFIG);
default URL http://127.0.0.1:8080.
"""

_HELP = {"help_option_names": ["-h", "--help"]}
_PASSTHROUGH = {
    "allow_extra_args": True,
    "ignore_unknown_options": True,
    "help_option_names": [],
}

app = typer.Typer(
    name="forklane",
    help="forklane: route requests that carry a routing key to your sandbox's forks.",
    epilog=EPILOG,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings=_HELP,
)
for sub, name in (
    (sandbox_app, "sandbox"),
    (routegroup_app, "routegroup"),
    (split_app, "split"),
    (service_app, "service"),
    (context_app, "context"),
):
    app.add_typer(sub, name=name, no_args_is_help=True)
for sub, short in ((sandbox_app, "sb"), (routegroup_app, "rg"), (split_app, "sp"),
                   (service_app, "svc")):  # fmt: skip
    app.add_typer(sub, name=short, no_args_is_help=True, hidden=True)
register(app)

app.command("explain")(explain)
app.command("tap")(tap)
app.command("connect")(connect)
app.command("login")(login)


# --- root ----------------------------------------------------------------------------------------


@app.callback()
def root(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option("--url", metavar="URL", help="control-plane URL (else FORKLANE_URL, context)"),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token", metavar="TOKEN", help="bearer token (else FORKLANE_TOKEN, context)"
        ),
    ] = None,
    context: Annotated[
        str | None, typer.Option("--context", metavar="NAME", help="config-file context to use")
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="print tracebacks on errors")] = False,
) -> None:
    if url is not None:
        try:
            url = normalize_url(url)
        except ConfigError as exc:
            raise typer.BadParameter(str(exc), param_hint="--url") from None
    ctx.obj = Globals(url, token, context, debug)


# --- proxies ----------------------------------------------------------------------------------


@app.command("proxies")
def proxies(ctx: typer.Context, output: OutputOpt = Format.table) -> None:
    """Proxies connected to the control plane and the snapshot versions they run."""
    with open_client(ctx) as client:
        items = client.proxies()
    doc = {"apiVersion": API_VERSION, "kind": "ProxyList", "items": [dump(p) for p in items]}
    emit(
        output,
        out_console(),
        sys.stdout,
        columns=PROXY_COLUMNS,
        rows=items,
        doc=doc,
        empty="no proxies connected",
    )


# --- components ------------------------------------------------------------------------------


@app.command("proxy", context_settings=_PASSTHROUGH, add_help_option=False)
def proxy_cmd(ctx: typer.Context) -> None:
    """Run the sidecar proxy: `python -m forklane.proxy ARGS...` (try `forklane proxy --help`)."""
    exec_component("proxy", list(ctx.args))


@app.command("controlplane", context_settings=_PASSTHROUGH, add_help_option=False)
def controlplane_cmd(ctx: typer.Context) -> None:
    """Run the control plane: `python -m forklane.controlplane ARGS...` (try `... --help`)."""
    exec_component("controlplane", list(ctx.args))


@app.command("inject", context_settings=_PASSTHROUGH, add_help_option=False)
def inject_cmd(ctx: typer.Context) -> None:
    """Add the sidecar to manifests offline, like the webhook: `forklane inject -f app.yaml`
    (Deployments, StatefulSets, DaemonSets, Jobs, CronJobs, Pods; `-f -` reads stdin)."""
    exec_component("controlplane", ["inject", *ctx.args])


@app.command("demo")
def demo(
    requests: Annotated[
        int, typer.Option("--requests", "-n", min=2, help="requests to send, every 2nd with the key")
    ] = 4,
    keep: Annotated[
        bool, typer.Option("--keep", help="leave everything running until Ctrl-C, to try curl")
    ] = False,
) -> None:
    """Run control plane, services and sidecars on loopback; show a request reach a fork."""
    from forklane.demo import run_demo  # loaded only here: the other commands do not need it

    run_demo(out_console(), requests=requests, keep=keep)


# --- entry point ------------------------------------------------------------------------------


def exit_code_for(exc: ForklaneError) -> int:
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run the CLI; every outcome becomes an exit code (see the module docstring).

    Typer handles usage errors (exit 2) and `--help`; SDK errors are translated here, once,
    into one line on stderr and their exit code.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        result = app(args=args, prog_name="forklane", standalone_mode=False)
        code = result if isinstance(result, int) else EXIT_OK
    except click.UsageError as exc:  # one line, naming the command's help
        where = exc.ctx.command_path if exc.ctx is not None else "forklane"
        sys.stderr.write(f"error: {exc.format_message()} (see '{where} -h')\n")
        code = EXIT_USAGE
    except typer.Abort:
        sys.stderr.write("\naborted\n")
        code = 130
    except click.ClickException as exc:
        sys.stderr.write(f"error: {exc.format_message()}\n")
        code = exc.exit_code
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else EXIT_ERROR
    except ForklaneError as exc:
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"error: {exc}\n")
        code = exit_code_for(exc)
    except KeyboardInterrupt:
        sys.stderr.write("\naborted\n")
        code = 130
    except Exception as exc:  # the last resort: one line, never a bare traceback
        if debug:
            traceback.print_exc()
        sys.stderr.write(
            f"error: unexpected {type(exc).__name__}: {exc} (run with --debug for details)\n"
        )
        code = EXIT_ERROR
    sys.exit(code)


if __name__ == "__main__":
    main()
