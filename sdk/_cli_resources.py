"""The resource commands: `sandbox`, `routegroup`, `split` and `service` (create, list, get,
delete; plus `sandbox wait|extend` and `split set`).

Each command parses its flags into a wire model, makes one SDK call and shows the result
(`-o table|json|yaml`); errors propagate to `sdk.cli.main`, which maps them to exit codes.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.table import Table

from forklane._cli_common import (
    FileOpt,
    LabelOpt,
    NameArg,
    NamesArg,
    OutputOpt,
    UsageProblem,
    delete_all,
    err_console,
    load_resource,
    model_from_flags,
    open_client,
    out_console,
    parse_flag,
    parse_pairs,
    show,
    validation_problem,
    wait_with_spinner,
)
from forklane._cli_render import (
    ROUTEGROUP_COLUMNS,
    SANDBOX_COLUMNS,
    SERVICE_COLUMNS,
    SPLIT_COLUMNS,
    Column,
    Format,
)
from forklane._core import (
    ROUTING_KEY_HEADER,
    build_sandbox,
    new_sandbox_name,
    parse_duration,
    parse_endpoints,
)
from forklane._forks import parse_images, workload_fork, workload_lines
from forklane.controlplane.wire import (
    RouteGroup,
    Sandbox,
    ServiceResource,
    Split,
    SplitDestinationSpec,
    dump,
)

__all__ = ["parse_destination", "routegroup_app", "sandbox_app", "service_app", "split_app"]

sandbox_app = typer.Typer(help="Create, inspect, extend and delete sandboxes.")
routegroup_app = typer.Typer(help="Route groups: one key joining forks of several sandboxes.")
split_app = typer.Typer(help="Traffic splits of a service: weights, sticky users.")
service_app = typer.Typer(help="Baseline services: names, authorities, endpoints.")


# --- sandboxes -----------------------------------------------------------------------------------


@sandbox_app.command("create")
def sandbox_create(
    ctx: typer.Context,
    file: FileOpt = None,
    fork: Annotated[
        list[str] | None,
        typer.Option(
            "--fork",
            metavar="SERVICE=HOST:PORT|NAME.NAMESPACE",
            help="repeatable; HOST:PORT,HOST:PORT for several; SERVICE=local for a fork "
            "served by forklane connect; NAME.NAMESPACE alone forks that service's Deployment "
            "in the cluster (with --image/--env/--replicas)",
        ),
    ] = None,
    image: Annotated[
        list[str] | None,
        typer.Option("--image", metavar="CONTAINER=IMAGE",
                     help="a Deployment fork's image for one container (repeatable)"),
    ] = None,
    env: Annotated[
        list[str] | None,
        typer.Option("--env", metavar="[CONTAINER:]K=V",
                     help="a Deployment fork's environment variable (repeatable)"),
    ] = None,
    replicas: Annotated[
        int | None,
        typer.Option("--replicas", metavar="N", min=1, max=20,
                     help="a Deployment fork's replicas (default 1)"),
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
    labels = parse_pairs(label, "--label")
    if file is not None:
        base = load_resource(file, Sandbox, "Sandbox", name, new_sandbox_name())
        wanted = parse_flag(
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
        forks = fork_flags(fork or [], image or [], env or [], replicas)
        wanted = parse_flag(
            "--fork/--ttl",
            lambda: build_sandbox(forks, name=name, ttl=ttl, labels=labels,
                                  routing_key=routing_key),
        )
    with open_client(ctx) as client:
        created = client.sandboxes.create(wanted)
        if wait:
            created = wait_with_spinner(client, created.metadata.name, timeout)
    show(output, SANDBOX_COLUMNS, [created], "Sandbox", single=True)
    key = created.status.routing_key if created.status else created.spec.routing_key
    if output is Format.table and key:
        err_console().print(f"send requests with -H '{ROUTING_KEY_HEADER}: {key}'", highlight=False)


def fork_flags(forks: list[str], images: list[str], env: list[str],
               replicas: int | None) -> list[str | dict[str, Any]]:
    """--fork values: SERVICE=HOST:PORT as given; NAME.NAMESPACE as a Deployment fork that
    --image, --env and --replicas customize (they need exactly one such fork)."""
    workloads = [f for f in forks if "=" not in f]
    customized = bool(images or env or replicas is not None)
    if customized and len(workloads) != 1:
        raise UsageProblem("--image, --env and --replicas customize one Deployment fork: give "
                           "exactly one --fork NAME.NAMESPACE with them")
    out: list[str | dict[str, Any]] = []
    for value in forks:
        if "=" in value:
            out.append(value)
            continue
        try:
            out.append(workload_fork(value, images=parse_images(images), env=env,
                                     replicas=replicas))
        except ValueError as exc:
            raise UsageProblem(str(exc)) from None
    return out


@sandbox_app.command("wait")
def sandbox_wait(
    ctx: typer.Context,
    name: NameArg,
    timeout: Annotated[float, typer.Option("--timeout", metavar="SECONDS")] = 120.0,
    output: OutputOpt = Format.table,
) -> None:
    """Wait until a sandbox is Ready (exit 8 at the deadline)."""
    with open_client(ctx) as client:
        item = wait_with_spinner(client, name, timeout)
    show(output, SANDBOX_COLUMNS, [item], "Sandbox", single=True)


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
    parse_flag("--ttl", lambda: parse_duration(ttl))
    with open_client(ctx) as client:
        item = parse_flag(name, lambda: client.sandboxes.extend(name, ttl))
    show(output, SANDBOX_COLUMNS, [item], "Sandbox", single=True)


@sandbox_app.command("fault")
def sandbox_fault(
    ctx: typer.Context,
    name: NameArg,
    service: Annotated[str, typer.Option("--service", metavar="SERVICE", help="the callee")],
    abort: Annotated[
        int | None, typer.Option("--abort", metavar="STATUS", help="answer this HTTP status")
    ] = None,
    grpc_status: Annotated[
        int | None,
        typer.Option("--grpc-status", metavar="CODE", help="gRPC calls get this status"),
    ] = None,
    delay_ms: Annotated[
        int | None, typer.Option("--delay-ms", metavar="MS", help="hold requests this long")
    ] = None,
    percent: Annotated[
        float, typer.Option("--percent", metavar="P", help="share of the sandbox's requests")
    ] = 100.0,
    clear: Annotated[bool, typer.Option("--clear", help="remove the fault for SERVICE")] = False,
    output: OutputOpt = Format.table,
) -> None:
    """Inject a fault into this sandbox's own requests to SERVICE (never anyone else's)."""
    effects = [x is not None for x in (abort, grpc_status, delay_ms)]
    if clear == any(effects):
        raise UsageProblem("give --abort, --grpc-status or --delay-ms, or --clear")
    with open_client(ctx) as client:
        current = client.sandboxes.get(name)
        doc = dump(current)
        faults = [f for f in doc["spec"].get("faults", []) if f.get("service") != service]
        if not clear:
            fault: dict[str, object] = {"service": service, "percent": percent}
            for field, value in (("abortStatus", abort), ("grpcStatus", grpc_status),
                                 ("delayMs", delay_ms)):  # fmt: skip
                if value is not None:
                    fault[field] = value
            faults.append(fault)
        doc["spec"]["faults"] = faults
        try:
            wanted = Sandbox.model_validate(doc)
        except ValidationError as exc:
            raise validation_problem("--abort/--grpc-status/--delay-ms/--percent", exc) from None
        item = client.sandboxes.update(wanted)
    show(output, SANDBOX_COLUMNS, [item], "Sandbox", single=True)


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
        wanted = load_resource(file, RouteGroup, "RouteGroup", name)
    else:
        if not name or not selector:
            raise UsageProblem("give NAME and at least one --selector KEY=VALUE, or -f FILE")
        spec = {
            "selector": parse_pairs(selector, "--selector"),
            "routingKey": routing_key,
            "fallback": fallback,
        }
        wanted = model_from_flags(
            RouteGroup, name, label, {k: v for k, v in spec.items() if v is not None}
        )
    with open_client(ctx) as client:
        item = client.routegroups.create(wanted)
    show(output, ROUTEGROUP_COLUMNS, [item], "RouteGroup", single=True)


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
    destinations = [parse_flag("--dest", partial(parse_destination, d)) for d in dest]
    sticky = {"header": sticky_header, "cookie": sticky_cookie}
    doc = {
        "metadata": {"name": name or service, "labels": parse_pairs(label, "--label")},
        "spec": {
            "service": service,
            "destinations": [dump(d) for d in destinations],
            **({"sticky": sticky} if sticky_header or sticky_cookie else {}),
        },
    }
    try:
        wanted = Split.model_validate(doc)
    except ValidationError as exc:
        raise validation_problem("split", exc) from None
    with open_client(ctx) as client:
        item = client.splits.apply(wanted)
    show(output, SPLIT_COLUMNS, [item], "Split", single=True)


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
        wanted = load_resource(file, ServiceResource, "Service", name)
    else:
        if not name or not endpoint:
            raise UsageProblem("give NAME and at least one --endpoint HOST:PORT, or -f FILE")
        spec = {"endpoints": endpoint, "authorities": authority or [], "lb": lb}
        wanted = model_from_flags(ServiceResource, name, label, spec)
    with open_client(ctx) as client:
        item = client.services.create(wanted)
    show(output, SERVICE_COLUMNS, [item], "Service", single=True)


def show_workloads(sb: Sandbox) -> None:
    """A Deployment fork's workload and its pods, under the sandbox's row."""
    rows = workload_lines(sb)
    if not rows:
        return
    table = Table(box=None, pad_edge=False)
    for title in ("WORKLOAD", "READY", "POD", "POD READY", "IP", "REASON"):
        table.add_column(title, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console = out_console()
    console.print()
    console.print(table)


def add_read_delete_commands(
    app: typer.Typer,
    attr: str,
    columns: tuple[Column, ...],
    kind: str,
    *,
    list_doc: str,
    get_doc: str,
    delete_doc: str,
) -> None:
    """`list`, `get` and `delete` of one resource: the same three commands for every kind."""

    def list_command(
        ctx: typer.Context, label: LabelOpt = None, output: OutputOpt = Format.table
    ) -> None:
        with open_client(ctx) as client:
            items = getattr(client, attr).list(parse_pairs(label, "--label"))
        show(output, columns, items, kind, single=False)

    def get_command(ctx: typer.Context, name: NameArg, output: OutputOpt = Format.table) -> None:
        with open_client(ctx) as client:
            item = getattr(client, attr).get(name)
        show(output, columns, [item], kind, single=True)
        if isinstance(item, Sandbox) and output in (Format.table, Format.wide):
            show_workloads(item)

    def delete_command(
        ctx: typer.Context,
        names: NamesArg,
        ignore_not_found: Annotated[bool, typer.Option("--ignore-not-found")] = False,
        wait: Annotated[
            bool, typer.Option("--wait", help="wait until each one is gone, showing progress")
        ] = False,
        timeout: Annotated[float, typer.Option("--timeout", metavar="SECONDS")] = 120.0,
    ) -> None:
        with open_client(ctx) as client:
            delete_all(getattr(client, attr), names, ignore_not_found,
                       wait=timeout if wait else None)

    list_command.__doc__, get_command.__doc__, delete_command.__doc__ = (
        list_doc, get_doc, delete_doc
    )
    app.command("list")(list_command)
    app.command("get")(get_command)
    app.command("delete")(delete_command)


add_read_delete_commands(
    sandbox_app, "sandboxes", SANDBOX_COLUMNS, "Sandbox",
    list_doc="List sandboxes (filter with --label).", get_doc="Show one sandbox.",
    delete_doc="Delete sandboxes; their routes are withdrawn.",
)
add_read_delete_commands(
    routegroup_app, "routegroups", ROUTEGROUP_COLUMNS, "RouteGroup",
    list_doc="List route groups.", get_doc="Show one route group.",
    delete_doc="Delete route groups.",
)
add_read_delete_commands(
    split_app, "splits", SPLIT_COLUMNS, "Split",
    list_doc="List splits.", get_doc="Show one split.",
    delete_doc="Delete splits (traffic goes back to the baseline).",
)
add_read_delete_commands(
    service_app, "services", SERVICE_COLUMNS, "Service",
    list_doc="List baseline services.", get_doc="Show one service.",
    delete_doc="Delete baseline services.",
)
