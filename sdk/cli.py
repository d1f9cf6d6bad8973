"""`forklane`: the command line for sandboxes, route groups, splits, services and proxies.

Every command talks to the control plane through `sdk.client.Client`; the CLI adds parsing
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

Tracebacks are printed only with `--debug`. `forklane proxy ...` and `forklane controlplane
...` exec `python -m proxy` / `python -m controlplane` with the arguments untouched, so the
sidecar process never loads the CLI's dependencies and the SDK never imports the proxy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import httpx
import typer
import yaml
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from controlplane.wire import (
    API_VERSION,
    RouteGroup,
    Sandbox,
    ServiceResource,
    Split,
    SplitDestinationSpec,
    dump,
)
from sdk._cli_render import (
    CONTEXT_COLUMNS,
    PROXY_COLUMNS,
    ROUTEGROUP_COLUMNS,
    SANDBOX_COLUMNS,
    SERVICE_COLUMNS,
    SPLIT_COLUMNS,
    Column,
    Format,
    contexts_document,
    emit,
    emit_document,
    explanation_text,
    list_document,
)
from sdk._core import (
    ROUTING_KEY_HEADER,
    build_sandbox,
    new_sandbox_name,
    parse_duration,
    parse_endpoints,
)
from sdk.client import Client, Resource
from sdk.config import (
    ConfigFile,
    Context,
    config_path,
    load_config_file,
    normalize_url,
    resolve_config,
    save_config_file,
)
from sdk.errors import (
    Conflict,
    Forbidden,
    ForklaneError,
    Invalid,
    NotFound,
    Unauthorized,
    Unavailable,
    WaitTimeout,
    error_from_response,
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
}

EPILOG = """Exit codes:

\b
  0  ok                        5  unauthorized or forbidden
  1  error                     6  invalid (rejected by the control plane)
  2  usage                     7  unavailable (control plane or proxy unreachable)
  3  not found                 8  timeout (waiting for Ready)
  4  conflict

Configuration: --url/--token/--context, else FORKLANE_URL, FORKLANE_TOKEN, FORKLANE_CONTEXT,
else the current context of ~/.config/forklane/config.yaml (path: FORKLANE_CONFIG); default
URL http://127.0.0.1:8080.
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
sandbox_app = typer.Typer(
    help="Create, inspect, extend and delete sandboxes.", no_args_is_help=True
)
routegroup_app = typer.Typer(help="Route groups: one key joining forks of several sandboxes.")
split_app = typer.Typer(help="Traffic splits of a service: weights, sticky users.")
service_app = typer.Typer(help="Baseline services: names, authorities, endpoints.")
context_app = typer.Typer(help="Named control-plane contexts in the config file.")
for sub, name in (
    (sandbox_app, "sandbox"),
    (routegroup_app, "routegroup"),
    (split_app, "split"),
    (service_app, "service"),
    (context_app, "context"),
):
    app.add_typer(sub, name=name, no_args_is_help=True)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Globals:
    url: str | None
    token: str | None
    context: str | None
    debug: bool


class UsageProblem(typer.BadParameter):
    """A flag value we could not parse: typer prints the usage line and exits 2."""


# --- shared option types ------------------------------------------------------------------------

OutputOpt = Annotated[
    Format,
    typer.Option(
        "--output", "-o", metavar="table|json|yaml", help="table for people, json/yaml for scripts"
    ),
]
LabelOpt = Annotated[
    list[str] | None, typer.Option("--label", "-l", metavar="KEY=VALUE", help="repeatable")
]
NameArg = Annotated[str, typer.Argument(metavar="NAME")]
NamesArg = Annotated[list[str], typer.Argument(metavar="NAME")]
FileOpt = Annotated[
    Path | None,
    typer.Option("--file", "-f", metavar="FILE", help="YAML or JSON resource ('-': stdin)"),
]


def _stdout() -> Console:
    return Console(soft_wrap=False)


def _stderr() -> Console:
    return Console(stderr=True)


def _globals(ctx: typer.Context) -> Globals:
    root = ctx.find_root()
    obj = root.obj
    if not isinstance(obj, Globals):
        return Globals(None, None, None, False)
    return obj


@contextmanager
def _client(ctx: typer.Context) -> Iterator[Client]:
    g = _globals(ctx)
    with Client(url=g.url, token=g.token, context=g.context) as client:
        yield client


def _parse(what: str, fn: Callable[[], T]) -> T:
    """Run a flag parser, turning its ValueError into a usage error naming the flag."""
    try:
        return fn()
    except ValueError as exc:
        raise UsageProblem(f"{what}: {exc}") from None


def _pairs(values: Sequence[str] | None, flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values or ():
        key, sep, val = value.partition("=")
        if not sep or not key.strip():
            raise UsageProblem(f"{flag} {value!r}: expected KEY=VALUE")
        out[key.strip()] = val.strip()
    return out


def _read_document(path: Path) -> Any:
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageProblem(f"cannot read {path}: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageProblem(f"{path} is neither YAML nor JSON: {exc}") from None


def _validation_problem(source: str, exc: ValidationError) -> UsageProblem:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return UsageProblem(f"{source}: {where}: {first['msg']}" if where else f"{source}: {first}")


M = TypeVar("M", bound=BaseModel)


def _load_resource(
    path: Path, model: type[M], kind: str, name: str | None, default_name: str | None = None
) -> M:
    """A resource file (`kind`, `metadata`, `spec`), or a bare spec; `--name` overrides the
    file's name, and `default_name` fills it in when neither gives one."""
    doc = _read_document(path)
    if not isinstance(doc, dict):
        raise UsageProblem(f"{path}: expected a mapping with metadata and spec")
    if "spec" not in doc and "metadata" not in doc and "kind" not in doc:
        doc = {"spec": doc}
    if doc.get("kind", kind) != kind:
        raise UsageProblem(f"{path}: kind is {doc.get('kind')!r}, expected {kind!r}")
    doc = {"apiVersion": API_VERSION, "kind": kind, **doc}
    doc.pop("status", None)
    metadata = dict(doc.get("metadata") or {})
    if name or not metadata.get("name"):
        metadata["name"] = name or default_name
    doc["metadata"] = metadata
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise _validation_problem(str(path), exc) from None


def _show(
    fmt: Format, columns: Sequence[Column], items: Sequence[BaseModel], kind: str, single: bool
) -> None:
    doc = dump(items[0]) if single and items else list_document(kind, items)
    emit(fmt, _stdout(), sys.stdout, columns=columns, rows=items, doc=doc)


def _wait(client: Client, name: str, timeout: float) -> Sandbox:
    """Wait for Ready with a spinner and elapsed time on an interactive stderr."""
    console = _stderr()
    if not console.is_terminal:
        return client.sandboxes.wait_ready(name, timeout)
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(f"waiting for sandbox {name} to be Ready", total=None)

        def on_poll(sb: Sandbox) -> None:
            phase = sb.status.phase if sb.status else "Pending"
            progress.update(task, description=f"waiting for sandbox {name}: {phase}")

        return client.sandboxes.wait_ready(name, timeout, on_poll)


def _delete(resource: Resource[Any], names: list[str], missing_ok: bool) -> None:
    out = _stderr()
    for name in names:
        try:
            resource.delete(name)
        except NotFound:
            if not missing_ok:
                raise
            out.print(f"{resource.kind.label} {name} not found (ignored)")
        else:
            out.print(f"{resource.kind.label} {name} deleted")


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
    ctx.obj = Globals(url, token, context, debug)


# --- sandboxes -----------------------------------------------------------------------------------


@sandbox_app.command("create")
def sandbox_create(
    ctx: typer.Context,
    file: FileOpt = None,
    fork: Annotated[
        list[str] | None,
        typer.Option(
            "--fork",
            metavar="SERVICE=HOST:PORT",
            help="repeatable; HOST:PORT,HOST:PORT for several",
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", metavar="NAME", help="default: generated")
    ] = None,
    ttl: Annotated[
        str | None,
        typer.Option("--ttl", metavar="DURATION", help="e.g. 30m, 2h, 1d (default: none)"),
    ] = None,
    label: LabelOpt = None,
    routing_key: Annotated[
        str | None, typer.Option("--routing-key", metavar="KEY", help="default: generated")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="wait until Ready")] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", metavar="SECONDS", help="how long --wait waits")
    ] = 120.0,
    output: OutputOpt = Format.table,
) -> None:
    """Create a sandbox from a file or from --fork flags."""
    if (file is None) == (not fork):
        raise UsageProblem("give either -f FILE or at least one --fork SERVICE=HOST:PORT")
    labels = _pairs(label, "--label")
    if file is not None:
        base = _load_resource(file, Sandbox, "Sandbox", name, new_sandbox_name())
        wanted = _parse(
            str(file),
            lambda: build_sandbox(
                spec=base.spec,
                name=base.metadata.name,
                ttl=ttl,
                labels={**base.metadata.labels, **labels},
                routing_key=routing_key,
            ),
        )
    else:
        wanted = _parse(
            "--fork/--ttl",
            lambda: build_sandbox(fork, name=name, ttl=ttl, labels=labels, routing_key=routing_key),
        )
    with _client(ctx) as client:
        created = client.sandboxes.create(wanted)
        if wait:
            created = _wait(client, created.metadata.name, timeout)
    _show(output, SANDBOX_COLUMNS, [created], "Sandbox", single=True)
    key = created.status.routing_key if created.status else created.spec.routing_key
    if output is Format.table and key:
        _stderr().print(f"send requests with -H '{ROUTING_KEY_HEADER}: {key}'", highlight=False)


@sandbox_app.command("list")
def sandbox_list(
    ctx: typer.Context, label: LabelOpt = None, output: OutputOpt = Format.table
) -> None:
    """List sandboxes (filter with --label)."""
    with _client(ctx) as client:
        items = client.sandboxes.list(_pairs(label, "--label"))
    _show(output, SANDBOX_COLUMNS, items, "Sandbox", single=False)


@sandbox_app.command("get")
def sandbox_get(ctx: typer.Context, name: NameArg, output: OutputOpt = Format.table) -> None:
    """Show one sandbox."""
    with _client(ctx) as client:
        item = client.sandboxes.get(name)
    _show(output, SANDBOX_COLUMNS, [item], "Sandbox", single=True)


@sandbox_app.command("wait")
def sandbox_wait(
    ctx: typer.Context,
    name: NameArg,
    timeout: Annotated[float, typer.Option("--timeout", metavar="SECONDS")] = 120.0,
    output: OutputOpt = Format.table,
) -> None:
    """Wait until a sandbox is Ready (exit 8 at the deadline)."""
    with _client(ctx) as client:
        item = _wait(client, name, timeout)
    _show(output, SANDBOX_COLUMNS, [item], "Sandbox", single=True)


@sandbox_app.command("delete")
def sandbox_delete(
    ctx: typer.Context,
    names: NamesArg,
    ignore_not_found: Annotated[bool, typer.Option("--ignore-not-found")] = False,
) -> None:
    """Delete sandboxes; their routes are withdrawn."""
    with _client(ctx) as client:
        _delete(client.sandboxes, names, ignore_not_found)


@sandbox_app.command("extend")
def sandbox_extend(
    ctx: typer.Context,
    name: NameArg,
    ttl: Annotated[
        str, typer.Option("--ttl", metavar="DURATION", help="expire this long from now, e.g. 2h")
    ],
    output: OutputOpt = Format.table,
) -> None:
    """Push a sandbox's expiry to TTL from now."""
    _parse("--ttl", lambda: parse_duration(ttl))
    with _client(ctx) as client:
        item = _parse(name, lambda: client.sandboxes.extend(name, ttl))
    _show(output, SANDBOX_COLUMNS, [item], "Sandbox", single=True)


# --- route groups --------------------------------------------------------------------------------


@routegroup_app.command("create")
def routegroup_create(
    ctx: typer.Context,
    name: Annotated[
        str | None, typer.Argument(metavar="[NAME]", help="default: from the file")
    ] = None,
    file: FileOpt = None,
    selector: Annotated[
        list[str] | None,
        typer.Option("--selector", "-s", metavar="KEY=VALUE", help="sandbox label, repeatable"),
    ] = None,
    routing_key: Annotated[str | None, typer.Option("--routing-key", metavar="KEY")] = None,
    fallback: Annotated[str, typer.Option("--fallback", metavar="baseline|fail")] = "baseline",
    label: LabelOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Create a route group joining the forks of sandboxes matching --selector."""
    if file is not None:
        wanted = _load_resource(file, RouteGroup, "RouteGroup", name)
    else:
        if not name or not selector:
            raise UsageProblem("give NAME and at least one --selector KEY=VALUE, or -f FILE")
        spec = {
            "selector": _pairs(selector, "--selector"),
            "routingKey": routing_key,
            "fallback": fallback,
        }
        wanted = _model(RouteGroup, name, label, {k: v for k, v in spec.items() if v is not None})
    with _client(ctx) as client:
        item = client.routegroups.create(wanted)
    _show(output, ROUTEGROUP_COLUMNS, [item], "RouteGroup", single=True)


def _model(model: type[M], name: str, label: Sequence[str] | None, spec: dict[str, Any]) -> M:
    doc = {"metadata": {"name": name, "labels": _pairs(label, "--label")}, "spec": spec}
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise _validation_problem("flags", exc) from None


@routegroup_app.command("list")
def routegroup_list(
    ctx: typer.Context, label: LabelOpt = None, output: OutputOpt = Format.table
) -> None:
    """List route groups."""
    with _client(ctx) as client:
        items = client.routegroups.list(_pairs(label, "--label"))
    _show(output, ROUTEGROUP_COLUMNS, items, "RouteGroup", single=False)


@routegroup_app.command("get")
def routegroup_get(ctx: typer.Context, name: NameArg, output: OutputOpt = Format.table) -> None:
    """Show one route group."""
    with _client(ctx) as client:
        item = client.routegroups.get(name)
    _show(output, ROUTEGROUP_COLUMNS, [item], "RouteGroup", single=True)


@routegroup_app.command("delete")
def routegroup_delete(
    ctx: typer.Context,
    names: NamesArg,
    ignore_not_found: Annotated[bool, typer.Option("--ignore-not-found")] = False,
) -> None:
    """Delete route groups."""
    with _client(ctx) as client:
        _delete(client.routegroups, names, ignore_not_found)


# --- splits --------------------------------------------------------------------------------------


def parse_destination(text: str) -> SplitDestinationSpec:
    """`NAME=HOST:PORT[,HOST:PORT]:WEIGHT` → a weighted destination."""
    expected = f"{text!r}: expected NAME=HOST:PORT:WEIGHT, e.g. v1=10.0.0.5:8080:90"
    name, sep, rest = text.partition("=")
    endpoints_text, colon, weight = rest.rpartition(":")
    if not sep or not name.strip() or not colon or not weight.strip().isdigit():
        raise ValueError(expected)
    if ":" not in endpoints_text:
        raise ValueError(expected)
    endpoints = parse_endpoints(endpoints_text)
    try:
        return SplitDestinationSpec.model_validate(
            {"name": name.strip(), "weight": int(weight), "endpoints": endpoints}
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ValueError(f"{text!r}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


@split_app.command("set")
def split_set(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(metavar="SERVICE")],
    dest: Annotated[
        list[str],
        typer.Option("--dest", "-d", metavar="NAME=HOST:PORT:WEIGHT", help="repeatable"),
    ],
    sticky_header: Annotated[
        str | None,
        typer.Option("--sticky-header", metavar="HEADER", help="keep a user on one side"),
    ] = None,
    sticky_cookie: Annotated[str | None, typer.Option("--sticky-cookie", metavar="COOKIE")] = None,
    name: Annotated[
        str | None, typer.Option("--name", metavar="NAME", help="default: the service name")
    ] = None,
    label: LabelOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Create or replace the weighted split of SERVICE (e.g. 90/10, sticky by a header)."""
    destinations = [_parse("--dest", partial(parse_destination, d)) for d in dest]
    sticky = {"header": sticky_header, "cookie": sticky_cookie}
    doc = {
        "metadata": {"name": name or service, "labels": _pairs(label, "--label")},
        "spec": {
            "service": service,
            "destinations": [dump(d) for d in destinations],
            **({"sticky": sticky} if sticky_header or sticky_cookie else {}),
        },
    }
    try:
        wanted = Split.model_validate(doc)
    except ValidationError as exc:
        raise _validation_problem("split", exc) from None
    with _client(ctx) as client:
        item = client.splits.apply(wanted)
    _show(output, SPLIT_COLUMNS, [item], "Split", single=True)


@split_app.command("list")
def split_list(
    ctx: typer.Context, label: LabelOpt = None, output: OutputOpt = Format.table
) -> None:
    """List splits."""
    with _client(ctx) as client:
        items = client.splits.list(_pairs(label, "--label"))
    _show(output, SPLIT_COLUMNS, items, "Split", single=False)


@split_app.command("get")
def split_get(ctx: typer.Context, name: NameArg, output: OutputOpt = Format.table) -> None:
    """Show one split."""
    with _client(ctx) as client:
        item = client.splits.get(name)
    _show(output, SPLIT_COLUMNS, [item], "Split", single=True)


@split_app.command("delete")
def split_delete(
    ctx: typer.Context,
    names: NamesArg,
    ignore_not_found: Annotated[bool, typer.Option("--ignore-not-found")] = False,
) -> None:
    """Delete splits (traffic goes back to the baseline)."""
    with _client(ctx) as client:
        _delete(client.splits, names, ignore_not_found)


# --- services ------------------------------------------------------------------------------------


@service_app.command("create")
def service_create(
    ctx: typer.Context,
    name: Annotated[
        str | None, typer.Argument(metavar="[NAME]", help="default: from the file")
    ] = None,
    file: FileOpt = None,
    endpoint: Annotated[
        list[str] | None, typer.Option("--endpoint", "-e", metavar="HOST:PORT", help="repeatable")
    ] = None,
    authority: Annotated[
        list[str] | None, typer.Option("--authority", "-a", metavar="HOST", help="repeatable")
    ] = None,
    lb: Annotated[str, typer.Option("--lb", metavar="round_robin|least_request")] = "round_robin",
    label: LabelOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Register a baseline service."""
    if file is not None:
        wanted = _load_resource(file, ServiceResource, "Service", name)
    else:
        if not name or not endpoint:
            raise UsageProblem("give NAME and at least one --endpoint HOST:PORT, or -f FILE")
        spec = {"endpoints": endpoint, "authorities": authority or [], "lb": lb}
        wanted = _model(ServiceResource, name, label, spec)
    with _client(ctx) as client:
        item = client.services.create(wanted)
    _show(output, SERVICE_COLUMNS, [item], "Service", single=True)


@service_app.command("list")
def service_list(
    ctx: typer.Context, label: LabelOpt = None, output: OutputOpt = Format.table
) -> None:
    """List baseline services."""
    with _client(ctx) as client:
        items = client.services.list(_pairs(label, "--label"))
    _show(output, SERVICE_COLUMNS, items, "Service", single=False)


@service_app.command("get")
def service_get(ctx: typer.Context, name: NameArg, output: OutputOpt = Format.table) -> None:
    """Show one service."""
    with _client(ctx) as client:
        item = client.services.get(name)
    _show(output, SERVICE_COLUMNS, [item], "Service", single=True)


@service_app.command("delete")
def service_delete(
    ctx: typer.Context,
    names: NamesArg,
    ignore_not_found: Annotated[bool, typer.Option("--ignore-not-found")] = False,
) -> None:
    """Delete baseline services."""
    with _client(ctx) as client:
        _delete(client.services, names, ignore_not_found)


# --- proxies, explain ------------------------------------------------------------------------------


@app.command("proxies")
def proxies(ctx: typer.Context, output: OutputOpt = Format.table) -> None:
    """Proxies connected to the control plane and the snapshot versions they run."""
    with _client(ctx) as client:
        items = client.proxies()
    doc = {"kind": "ProxyList", "items": [dump(p) for p in items]}
    emit(
        output,
        _stdout(),
        sys.stdout,
        columns=PROXY_COLUMNS,
        rows=items,
        doc=doc,
        empty="no proxies connected",
    )


def _header_pairs(values: Sequence[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values or ():
        name, sep, val = value.partition(":")
        if not sep or not name.strip():
            raise UsageProblem(f"-H {value!r}: expected 'NAME: VALUE'")
        out[name.strip().lower()] = val.strip()
    return out


def _explain_via_admin(admin: str, request: dict[str, Any]) -> dict[str, Any]:
    """`POST /explain` on a proxy's admin port: the decision of the table it runs now."""
    url = normalize_url(admin) + "/explain"
    try:
        r = httpx.post(url, json=request, timeout=10.0)
    except httpx.HTTPError as exc:
        raise Unavailable(f"proxy admin at {admin} unreachable: {exc}") from None
    try:
        body = r.json()
    except ValueError:
        body = None
    if r.status_code >= 400:
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            cls = Unavailable if r.status_code == 503 else Invalid
            raise cls(f"proxy admin: {body['error']}", status=r.status_code)
        raise error_from_response(r.status_code, r.content, f"POST {url}")
    if not isinstance(body, dict):
        raise ForklaneError(f"POST {url}: the answer is not a JSON object")
    return body


def _explain_via_snapshot(snapshot: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """Run the proxy's own decision code on the snapshot in a subprocess (the SDK never
    imports the proxy), so the answer is exactly what a proxy on that snapshot would do."""
    with tempfile.TemporaryDirectory(prefix="forklane-explain-") as tmp:
        config = Path(tmp) / "snapshot.json"
        config.write_text(json.dumps(snapshot), encoding="utf-8")
        argv = [sys.executable, "-m", "proxy", "explain", "--config", str(config),
                "--listener", request["listener"], "--method", request["method"],
                "--host", request["host"], "--path", request["path"], "-o", "json"]  # fmt: skip
        for name, value in request["headers"].items():
            argv += ["-H", f"{name}: {value}"]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        except subprocess.TimeoutExpired:
            raise ForklaneError("proxy explain did not finish within 60s") from None
    if done.returncode != 0:
        message = (done.stderr.strip().splitlines() or ["no reason given"])[-1]
        raise ForklaneError(f"explain failed: {message}")
    try:
        result = json.loads(done.stdout)
    except ValueError:
        raise ForklaneError("explain failed: the proxy printed no JSON decision") from None
    if not isinstance(result, dict):
        raise ForklaneError("explain failed: the proxy printed no JSON decision")
    return result


@app.command("explain")
def explain(
    ctx: typer.Context,
    host: Annotated[
        str, typer.Option("--host", metavar="HOST", help="Host / :authority of the request")
    ],
    path: Annotated[str, typer.Option("--path", metavar="PATH")] = "/",
    method: Annotated[str, typer.Option("--method", "-X", metavar="METHOD")] = "GET",
    header: Annotated[
        list[str] | None, typer.Option("--header", "-H", metavar="'NAME: VALUE'", help="repeatable")
    ] = None,
    routing_key: Annotated[
        str | None,
        typer.Option("--routing-key", "-k", metavar="KEY", help=f"adds {ROUTING_KEY_HEADER}"),
    ] = None,
    listener: Annotated[
        str, typer.Option("--listener", metavar="outbound|inbound", help="which side decides")
    ] = "outbound",
    proxy_admin: Annotated[
        str | None,
        typer.Option(
            "--proxy-admin",
            metavar="URL",
            help="ask this proxy's admin port instead, e.g. http://127.0.0.1:15000",
        ),
    ] = None,
    output: OutputOpt = Format.table,
) -> None:
    """Say where a request with these headers would go, and which rule decided it.

    Without --proxy-admin, the control plane's current snapshot is fetched and the proxy's
    own decision function runs on it locally.
    """
    if listener not in ("outbound", "inbound"):
        raise UsageProblem(f"--listener {listener!r}: expected outbound or inbound")
    headers = _header_pairs(header)
    if routing_key:
        headers[ROUTING_KEY_HEADER] = routing_key
    request: dict[str, Any] = {
        "listener": listener,
        "method": method.upper(),
        "host": host,
        "path": path,
        "headers": headers,
    }
    if proxy_admin:
        decision = _explain_via_admin(proxy_admin, request)
    else:
        with _client(ctx) as client:
            snapshot = client.snapshot()
        decision = _explain_via_snapshot(snapshot, request)
    if output is Format.table:
        _stdout().print(explanation_text(decision), highlight=False)
    else:
        emit_document(decision, output, sys.stdout)


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
        _stdout(),
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
    _stderr().print(f"current context is now {name}")


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
    _stderr().print(f"context {name} saved in {cfg.path}")


@app.command("login")
def login(
    url: Annotated[str, typer.Option("--url", metavar="URL", help="control-plane URL")],
    token: Annotated[
        str | None,
        typer.Option("--token", metavar="TOKEN", help="bearer token (prompted when omitted)"),
    ] = None,
    name: Annotated[
        str, typer.Option("--context", metavar="NAME", help="context name to save")
    ] = "default",
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="check the token first")
    ] = True,
) -> None:
    """Save URL and token as a context, make it current (checking the token first)."""
    url = normalize_url(url)
    if token is None:
        token = typer.prompt("token", hide_input=True)
    if verify:
        with Client(config=resolve_config(url=url, token=token, env={})) as client:
            client.sandboxes.list()
    cfg = _config().with_context(Context(name, url, token or None))
    save_config_file(cfg.with_current(name))
    _stderr().print(f"logged in to {url} as context {name}")


# --- components ------------------------------------------------------------------------------


def _exec_module(module: str, args: list[str]) -> NoReturn:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", module, *args])


@app.command("proxy", context_settings=_PASSTHROUGH, add_help_option=False)
def proxy_cmd(ctx: typer.Context) -> None:
    """Run the sidecar proxy: `python -m proxy ARGS...` (try `forklane proxy --help`)."""
    _exec_module("proxy", list(ctx.args))


@app.command("controlplane", context_settings=_PASSTHROUGH, add_help_option=False)
def controlplane_cmd(ctx: typer.Context) -> None:
    """Run the control plane: `python -m controlplane ARGS...` (try `... --help`)."""
    _exec_module("controlplane", list(ctx.args))


@app.command("demo")
def demo() -> None:
    """Start a local demo of routing with a sandbox (not available yet)."""
    sys.stderr.write("error: forklane demo is not available in this version yet\n")
    raise typer.Exit(EXIT_ERROR)


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
        app(args=args, prog_name="forklane")
        code = EXIT_OK
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
