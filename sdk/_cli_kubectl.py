"""kubectl's verbs over every forklane kind: `get` (with `-w`), `describe`, `apply -f`,
`delete`, and `version`, `token`, `auth status`.

Kinds go by their plural, singular or short name (`sandboxes`, `sandbox`, `sb`; `routegroups`
`rg`; `splits` `sp`; `services` `svc`), and `KIND/NAME` works wherever `KIND NAME` does.
`apply -f` takes multi-document YAML (or JSON) of any kinds, `-` for stdin, and applies
Services first, then Sandboxes and Splits, then RouteGroups, so a file may define a service
after the sandbox that forks it; applying the same file twice changes nothing (`unchanged`).
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import BaseModel

from forklane._cli_common import (
    OutputOpt,
    UsageProblem,
    err_console,
    open_client,
    out_console,
)
from forklane._cli_render import (
    ROUTEGROUP_COLUMNS,
    SANDBOX_COLUMNS,
    SERVICE_COLUMNS,
    SPLIT_COLUMNS,
    Column,
    Format,
    JsonPath,
    connection_line,
    emit,
    emit_document,
    list_document,
    table,
)
from forklane._core import ROUTEGROUPS, SANDBOXES, SERVICES, SPLITS, Kind
from forklane.client import Client
from forklane.controlplane.selector import parse_selector
from forklane.controlplane.wire import API_VERSION, ConnectionStatus, dump
from forklane.errors import Invalid, NotFound

__all__ = ["auth_app", "register", "token_app"]

KINDS: dict[str, Kind[Any]] = {}
for _kind, _names in (
    (SANDBOXES, ("sandboxes", "sandbox", "sb")),
    (ROUTEGROUPS, ("routegroups", "routegroup", "rg")),
    (SPLITS, ("splits", "split", "sp")),
    (SERVICES, ("services", "service", "svc")),
):
    for _n in _names:
        KINDS[_n] = _kind
BY_KIND: dict[str, Kind[Any]] = {"Sandbox": SANDBOXES, "RouteGroup": ROUTEGROUPS, "Split": SPLITS, "Service": SERVICES}
APPLY_ORDER = {"services": 0, "sandboxes": 1, "splits": 1, "routegroups": 2}
KIND_NAMES = "sandboxes|sb, routegroups|rg, splits|sp, services|svc"


def _reason(item: Any) -> str:
    status = getattr(item, "status", None)
    for cond in getattr(status, "conditions", ()) or ():
        if cond.status != "True":
            return f"{cond.type}: {cond.reason}"
    return "-"


COLUMNS: dict[str, tuple[tuple[Column, ...], tuple[Column, ...]]] = {
    "sandboxes": (SANDBOX_COLUMNS, (
        Column("TENANT", lambda sb: sb.metadata.tenant or "-"),
        Column("FALLBACK", lambda sb: sb.spec.fallback),
        Column("LABELS", lambda sb: ",".join(f"{k}={v}" for k, v in sb.metadata.labels.items())
               or "-"),
        Column("REASON", _reason),
    )),
    "routegroups": (ROUTEGROUP_COLUMNS, (
        Column("TENANT", lambda rg: rg.metadata.tenant or "-"),
        Column("FALLBACK", lambda rg: rg.spec.fallback),
    )),
    "splits": (SPLIT_COLUMNS, (Column("REASON", _reason),)),
    "services": (SERVICE_COLUMNS, (Column("REASON", _reason),)),
}  # fmt: skip


def kind_of(text: str) -> tuple[Kind[Any], str | None]:
    """`sb` → (SANDBOXES, None); `sb/foo` → (SANDBOXES, "foo")."""
    word, _, name = text.partition("/")
    kind = KINDS.get(word.lower())
    if kind is None:
        raise UsageProblem(f"unknown kind {word!r}: one of {KIND_NAMES}")
    return kind, name or None


def _selector(text: str | None) -> str | None:
    if not text:
        return None
    try:
        return str(parse_selector(text))
    except ValueError as exc:
        raise UsageProblem(f"-l {text!r}: {exc}") from None


def _list(client: Client, kind: Kind[Any], selector: str | None,
          tenant: str | None = None) -> tuple[list[Any], str]:
    params = {"labelSelector": selector} if selector else {}
    if tenant:
        params["tenant"] = tenant
    doc = client.call("GET", kind.collection(), params=params or None)
    items = [kind.model.model_validate(i) for i in doc.get("items", [])]
    return items, str(doc.get("metadata", {}).get("resourceVersion", ""))


def get(
    ctx: typer.Context,
    kind: Annotated[str, typer.Argument(metavar="KIND[/NAME]", help=KIND_NAMES)],
    names: Annotated[list[str] | None, typer.Argument(metavar="[NAME]...")] = None,
    selector: Annotated[
        str | None,
        typer.Option("--selector", "-l", metavar="SELECTOR",
                     help="e.g. team=pay,env in (dev,test),!legacy"),
    ] = None,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="then print every change")] = False,
    tenant: Annotated[
        str | None,
        typer.Option("--tenant", metavar="NAME",
                     help="sandboxes and route groups of this tenant only"),
    ] = None,
    output: OutputOpt = Format.table,
) -> None:
    """List or show resources of one kind (kubectl get)."""
    which, one = kind_of(kind)
    if tenant and which.plural not in ("sandboxes", "routegroups"):
        raise UsageProblem(f"--tenant: {which.plural} are shared by every tenant")
    wanted = [n for n in ([one] if one else []) + list(names or [])]
    columns, wide = COLUMNS[which.plural]
    with open_client(ctx) as client:
        if wanted:
            items = [client.call("GET", which.item(n)) for n in wanted]
            models = [which.model.model_validate(i) for i in items]
            doc: Any = items[0] if len(items) == 1 else list_document(
                which.model.__name__.removesuffix("Resource"), models)
            emit(output, out_console(), sys.stdout, columns=columns, rows=models, doc=doc,
                 wide=wide)  # fmt: skip
            version_seen = models[-1].metadata.resource_version if watch else None
        else:
            models, version_seen = _list(client, which, _selector(selector), tenant)
            kind_name = which.model.__name__.removesuffix("Resource")
            emit(output, out_console(), sys.stdout, columns=columns, rows=models,
                 doc=list_document(kind_name, models), wide=wide,
                 empty=f"no {which.plural} found")  # fmt: skip
        if watch:
            _watch(client, which, version_seen, _selector(selector), set(wanted), output, tenant)


def _watch(
    client: Client, kind: Kind[Any], since: str | None, selector: str | None,
    names: set[str], output: Format | JsonPath, tenant: str | None = None,
) -> None:
    """Print each change as a row (tables, no header) or a document, until Ctrl-C."""
    columns, wide = COLUMNS[kind.plural]
    shown = [*columns, *(wide if output is Format.wide else ())]
    for event in client.watch(kind.plural, resource_version=since, selector=selector):
        if event.type == "BOOKMARK":
            continue
        obj = event.object
        if names and obj.get("metadata", {}).get("name") not in names:
            continue
        if tenant and obj.get("metadata", {}).get("tenant") != tenant:
            continue
        if output in (Format.table, Format.wide):
            model = kind.model.model_validate(obj)
            row = table(shown, [model]).splitlines()[1]
            sys.stdout.write(f"{row}   {event.type}\n" if event.type == "DELETED" else f"{row}\n")
            sys.stdout.flush()
        else:
            emit_document(obj, output, sys.stdout)


def describe(
    ctx: typer.Context,
    kind: Annotated[str, typer.Argument(metavar="KIND[/NAME]", help=KIND_NAMES)],
    name: Annotated[str | None, typer.Argument(metavar="[NAME]")] = None,
) -> None:
    """Spec, status, conditions with their reasons, and events (pushes, ACKs, changes)."""
    which, one = kind_of(kind)
    name = name or one
    if not name:
        raise UsageProblem("give KIND NAME or KIND/NAME")
    with open_client(ctx) as client:
        doc = client.call("GET", which.item(name))
        events = client.call("GET", which.item(name) + "/events")
    out = sys.stdout
    meta, status = doc.get("metadata", {}), doc.get("status") or {}
    out.write(f"Name:         {meta.get('name')}\nKind:         {doc.get('kind')}\n")
    labels = ",".join(f"{k}={v}" for k, v in (meta.get("labels") or {}).items()) or "<none>"
    out.write(f"Labels:       {labels}\nCreated by:   {meta.get('createdBy')}\n")
    if meta.get("tenant"):
        out.write(f"Tenant:       {meta['tenant']}\n")
    out.write(f"Created:      {meta.get('creationTimestamp')}\n")
    out.write(f"Generation:   {meta.get('generation')} (status observed "
              f"{status.get('observedGeneration', '-')})\n")  # fmt: skip
    out.write(f"Phase:        {status.get('phase', '-')}\n")
    if status.get("routingKey"):
        out.write(f"Routing key:  {status['routingKey']}\n")
    if status.get("expiresAt"):
        out.write(f"Expires:      {status['expiresAt']}\n")
    if status.get("notSelected"):
        out.write(f"Not selected: {status['notSelected']} matching sandbox(es) of the tenant are "
                  "neither yours nor shared with you (spec.sharedWith)\n")
    for raw in status.get("connections") or ():
        c = ConnectionStatus.model_validate(raw)
        out.write(f"Connected:    {c.service} {connection_line(c)} (tunnel {c.endpoint}, "
                  f"replica {c.replica or '-'})\n")
    out.write("Spec:\n" + "".join(f"  {line}\n" for line in
                                  yaml.safe_dump(doc.get("spec"), sort_keys=False).splitlines()))
    conditions = status.get("conditions") or []
    out.write("Conditions:\n")
    cols: tuple[Column, ...]
    if conditions:
        cols = (Column("  TYPE", lambda c: "  " + c["type"]), Column("STATUS", lambda c: c["status"]),
                Column("REASON", lambda c: c.get("reason") or "-"),
                Column("MESSAGE", lambda c: c.get("message") or "-"))  # fmt: skip
        out.write(table(cols, conditions))
    else:
        out.write("  <none>\n")
    out.write("Events:\n")
    items = events.get("items") or []
    if items:
        cols = (Column("  TIME", lambda e: "  " + e["time"][:19].replace("T", " ")),
                Column("TYPE", lambda e: e["type"]), Column("REASON", lambda e: e["reason"]),
                Column("FROM", lambda e: e.get("source") or "-"),
                Column("MESSAGE", lambda e: e.get("message") or "-"))  # fmt: skip
        out.write(table(cols, items))
    else:
        out.write("  <none>\n")


def _documents(path: Path) -> list[BaseModel]:
    """Every resource of a (multi-document) YAML or JSON file, validated locally."""
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageProblem(f"cannot read {path}: {exc.strerror}") from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise UsageProblem(f"{path} is neither YAML nor JSON: {exc}") from None
    out: list[BaseModel] = []
    for i, doc in enumerate(docs):
        where = f"{path} (document {i + 1})"
        if not isinstance(doc, dict) or doc.get("kind") not in BY_KIND:
            raise Invalid(f"{where}: kind must be one of {', '.join(BY_KIND)}",
                          fields=[("kind", "missing or unknown")])  # fmt: skip
        kind = BY_KIND[doc["kind"]]
        body = {k: v for k, v in doc.items() if k != "status"}
        try:
            out.append(kind.coerce(body))
        except Invalid as exc:
            raise Invalid(f"{where}: {exc.message}", fields=exc.fields) from None
    return out


def _kind_for(model: BaseModel) -> Kind[Any]:
    return BY_KIND[str(getattr(model, "kind", ""))]


FileArg = Annotated[
    Path, typer.Option("--filename", "-f", metavar="FILE", help="YAML/JSON, several documents; '-': stdin")
]


def apply(
    ctx: typer.Context,
    file: FileArg,
    dry_run: Annotated[
        str, typer.Option("--dry-run", metavar="none|client|server",
                          help="server: the control plane checks everything, stores nothing")
    ] = "none",
    output: OutputOpt = Format.name,
) -> None:
    """Create or update every resource in FILE (kubectl apply); twice is a no-op."""
    if dry_run not in ("none", "client", "server"):
        raise UsageProblem(f"--dry-run {dry_run!r}: one of none, client, server")
    models = sorted(_documents(file), key=lambda m: APPLY_ORDER[_kind_for(m).plural])
    suffix = {"none": "", "client": " (dry run)", "server": " (server dry run)"}[dry_run]
    results: list[dict[str, Any]] = []
    with open_client(ctx) as client:
        for model in models:
            kind = _kind_for(model)
            if dry_run == "client":
                action, result = "checked", model
            else:
                action, result = client._run(
                    client._api.apply_action(kind, model, dry_run=dry_run == "server")
                )
            doc = dump(result)
            results.append(doc)
            if output is Format.name:
                sys.stdout.write(f"{kind.label.replace(' ', '')}/{result.metadata.name} "  # type: ignore[attr-defined]
                                 f"{action}{suffix}\n")  # fmt: skip
                sys.stdout.flush()
    if output is not Format.name:
        emit_document(results[0] if len(results) == 1 else
                      {"apiVersion": API_VERSION, "kind": "List", "items": results},
                      output, sys.stdout)  # fmt: skip


def delete(
    ctx: typer.Context,
    kind: Annotated[str | None, typer.Argument(metavar="[KIND[/NAME]]", help=KIND_NAMES)] = None,
    names: Annotated[list[str] | None, typer.Argument(metavar="[NAME]...")] = None,
    file: Annotated[
        Path | None, typer.Option("--filename", "-f", metavar="FILE", help="delete what FILE defines")
    ] = None,
    ignore_not_found: Annotated[bool, typer.Option("--ignore-not-found")] = False,
) -> None:
    """Delete resources by KIND NAME..., KIND/NAME, or everything FILE defines."""
    targets: list[tuple[Kind[Any], str]] = []
    if file is not None:
        if kind:
            raise UsageProblem("give -f FILE or KIND NAME..., not both")
        models = sorted(_documents(file), key=lambda m: -APPLY_ORDER[_kind_for(m).plural])
        targets = [(_kind_for(m), m.metadata.name) for m in models]  # type: ignore[attr-defined]
    elif kind:
        which, one = kind_of(kind)
        targets = [(which, n) for n in ([one] if one else []) + list(names or [])]
    if not targets:
        raise UsageProblem("give KIND NAME..., KIND/NAME or -f FILE")
    with open_client(ctx) as client:
        for which, name in targets:
            label = f"{which.label.replace(' ', '')}/{name}"
            try:
                client.call("DELETE", which.item(name))
            except NotFound:
                if not ignore_not_found:
                    raise
                sys.stdout.write(f"{label} not found (ignored)\n")
            else:
                sys.stdout.write(f"{label} deleted\n")


def version_cmd(
    ctx: typer.Context,
    client_only: Annotated[bool, typer.Option("--client", help="only this CLI's version")] = False,
    output: OutputOpt = Format.table,
) -> None:
    """Versions of this CLI, the control plane and every connected proxy."""
    try:
        mine = version("forklane")
    except PackageNotFoundError:
        mine = "unknown"
    doc: dict[str, Any] = {"apiVersion": API_VERSION, "kind": "Version", "clientVersion": mine}
    if not client_only:
        with open_client(ctx) as client:
            server = client.call("GET", "/version")
            proxies = client.proxies()
        doc["controlPlaneVersion"] = server.get("version")
        doc["controlPlaneReplica"] = server.get("replica")
        doc["proxies"] = [{"nodeId": p.node_id, "service": p.service, "version": p.version}
                          for p in proxies]  # fmt: skip
    if output in (Format.table, Format.wide):
        out = sys.stdout
        out.write(f"Client Version: {mine}\n")
        if not client_only:
            out.write(f"Control Plane Version: {doc['controlPlaneVersion']} "
                      f"(replica {doc['controlPlaneReplica']})\n")  # fmt: skip
            versions = sorted({p["version"] or "unknown" for p in doc["proxies"]})
            out.write(f"Proxy Versions: {', '.join(versions) or '-'} "
                      f"({len(doc['proxies'])} connected)\n")  # fmt: skip
    else:
        emit_document(doc, output, sys.stdout)


# --- tokens and auth ------------------------------------------------------------------------

token_app = typer.Typer(help="Bearer tokens: create (shown once), list, revoke (admin).")
auth_app = typer.Typer(help="Who you are to the control plane.")

TOKEN_COLUMNS = (
    Column("ID", lambda t: t["id"]), Column("SUBJECT", lambda t: t["subject"]),
    Column("ROLE", lambda t: t["role"]), Column("TENANT", lambda t: t.get("tenant") or "*"),
    Column("CREATED", lambda t: t.get("createdAt", "-")[:19]),
    Column("BY", lambda t: t.get("createdBy", "-")),
)  # fmt: skip


@token_app.command("create")
def token_create(
    ctx: typer.Context,
    role: Annotated[str, typer.Option("--role", metavar="proxy|consumer|developer|admin")],
    subject: Annotated[str, typer.Option("--subject", metavar="NAME", help="who uses it")],
    tenant: Annotated[
        str | None,
        typer.Option("--tenant", metavar="NAME",
                     help="developer tokens: the tenant (team) they act in (default: default)"),
    ] = None,
    output: OutputOpt = Format.table,
) -> None:
    """Create a token; the secret is printed once (the control plane keeps a hash)."""
    if role not in ("proxy", "consumer", "developer", "admin"):
        raise UsageProblem(f"--role {role!r}: one of proxy, consumer, developer, admin")
    if tenant is not None and role != "developer":
        raise UsageProblem(f"--tenant is for developer tokens; {role} tokens act in every tenant")
    body = {"subject": subject, "role": role, **({"tenant": tenant} if tenant else {})}
    with open_client(ctx) as client:
        doc = client.call("POST", "/api/v1/tokens", body)
    doc = {"apiVersion": API_VERSION, **doc}
    if output in (Format.table, Format.wide):
        sys.stdout.write(doc["token"] + "\n")
        where = f", tenant {doc['tenant']}" if doc.get("tenant") else ""
        err_console().print(f"token {doc['id']} for {subject} ({role}{where}); shown once, keep "
                            "it safe", highlight=False)  # fmt: skip
    else:
        emit_document(doc, output, sys.stdout)


@token_app.command("list")
def token_list(ctx: typer.Context, output: OutputOpt = Format.table) -> None:
    """List tokens (never their secrets)."""
    with open_client(ctx) as client:
        doc = client.call("GET", "/api/v1/tokens")
    emit(output, out_console(), sys.stdout, columns=TOKEN_COLUMNS, rows=doc["items"], doc=doc,
         empty="no tokens")  # fmt: skip


@token_app.command("revoke")
def token_revoke(ctx: typer.Context, ids: Annotated[list[str], typer.Argument(metavar="ID")]) -> None:
    """Revoke tokens: REST calls fail at once, a proxy's stream ends within a minute."""
    with open_client(ctx) as client:
        for token_id in ids:
            client.call("DELETE", f"/api/v1/tokens/{token_id}")
            sys.stdout.write(f"token/{token_id} revoked\n")


@auth_app.command("status")
def auth_status(ctx: typer.Context, output: OutputOpt = Format.table) -> None:
    """The control plane, the context, and who the token is (subject and role)."""
    with open_client(ctx) as client:
        me = client.call("GET", "/api/v1/whoami")
        where = client.config
    doc = {**me, "url": where.url, "context": where.context}
    if output in (Format.table, Format.wide):
        sys.stdout.write(f"Control plane: {where.url}\nContext:       {where.context or '-'}\n"
                         f"Subject:       {me['subject']}\nRole:          {me['role']}\n"
                         f"Tenant:        {me.get('tenant') or 'all'}\n")  # fmt: skip
    else:
        emit_document(doc, output, sys.stdout)


def register(app: typer.Typer) -> None:
    app.command("get")(get)
    app.command("describe")(describe)
    app.command("apply")(apply)
    app.command("delete")(delete)
    app.command("version")(version_cmd)
    app.add_typer(token_app, name="token", no_args_is_help=True)
    app.add_typer(auth_app, name="auth", no_args_is_help=True)
