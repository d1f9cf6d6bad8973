"""What every `forklane` command shares: global options, flag parsing, resource files, output.

Flag values are parsed here into wire models; a value that does not parse is a
`UsageProblem` (typer prints the usage line and exits 2) naming the flag and the reason.
Commands open their client through `open_client`, so `--url/--token/--context` apply to all.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import yaml
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from forklane._cli_render import (
    OUTPUTS,
    Column,
    Format,
    JsonPath,
    emit,
    list_document,
    parse_output,
)
from forklane._core import waiting_reason
from forklane.client import Client, Resource
from forklane.controlplane.wire import (
    API_VERSION,
    Sandbox,
    dump,
)
from forklane.errors import NotFound, WaitTimeout

__all__ = [
    "FileOpt",
    "Globals",
    "LabelOpt",
    "NameArg",
    "NamesArg",
    "OutputOpt",
    "UsageProblem",
    "delete_all",
    "err_console",
    "globals_of",
    "load_resource",
    "model_from_flags",
    "open_client",
    "out_console",
    "parse_flag",
    "parse_pairs",
    "print_warning",
    "read_document",
    "show",
    "validation_problem",
    "wait_with_spinner",
]

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

def _output(value: object) -> Format:
    """Typed as `Format` for typer (which takes one class); a `JsonPath` may come back, and
    every consumer (`emit`, `emit_document`) takes both."""
    try:
        return parse_output(value)  # type: ignore[return-value]
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


OutputOpt = Annotated[
    Format,
    typer.Option(
        "--output", "-o", metavar=OUTPUTS, parser=_output,
        help="table or wide for people; name, json, yaml or jsonpath=… for scripts",
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


def out_console() -> Console:
    return Console(soft_wrap=True, highlight=False)


def err_console() -> Console:
    return Console(stderr=True)


def globals_of(ctx: typer.Context) -> Globals:
    root = ctx.find_root()
    obj = root.obj
    if not isinstance(obj, Globals):
        return Globals(None, None, None, False)
    return obj


def print_warning(text: str) -> None:
    """A `Warning` the control plane sent (e.g. an unreachable fork), shown at once."""
    sys.stderr.write(f"Warning: {text}\n")
    sys.stderr.flush()


@contextmanager
def open_client(ctx: typer.Context) -> Iterator[Client]:
    g = globals_of(ctx)
    with Client(url=g.url, token=g.token, context=g.context, on_warning=print_warning) as client:
        yield client


def parse_flag(what: str, fn: Callable[[], T]) -> T:
    """Run a flag parser, turning its ValueError into a usage error naming the flag."""
    try:
        return fn()
    except ValueError as exc:
        raise UsageProblem(f"{what}: {exc}") from None


def parse_pairs(values: Sequence[str] | None, flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values or ():
        key, sep, val = value.partition("=")
        if not sep or not key.strip():
            raise UsageProblem(f"{flag} {value!r}: expected KEY=VALUE")
        out[key.strip()] = val.strip()
    return out


def read_document(path: Path) -> Any:
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageProblem(f"cannot read {path}: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageProblem(f"{path} is neither YAML nor JSON: {exc}") from None


def validation_problem(source: str, exc: ValidationError) -> UsageProblem:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return UsageProblem(f"{source}: {where}: {first['msg']}" if where else f"{source}: {first}")


M = TypeVar("M", bound=BaseModel)


def load_resource(
    path: Path, model: type[M], kind: str, name: str | None, default_name: str | None = None
) -> M:
    """A resource file (`kind`, `metadata`, `spec`), or a bare spec; `--name` overrides the
    file's name, and `default_name` fills it in when neither gives one."""
    doc = read_document(path)
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
        raise validation_problem(str(path), exc) from None


def show(
    fmt: Format | JsonPath, columns: Sequence[Column], items: Sequence[BaseModel], kind: str,
    single: bool, wide: Sequence[Column] = (),
) -> None:
    doc = dump(items[0]) if single and items else list_document(kind, items)
    emit(fmt, out_console(), sys.stdout, columns=columns, rows=items, doc=doc, wide=wide)


def wait_with_spinner(client: Client, name: str, timeout: float) -> Sandbox:
    """Wait for Ready, saying what it waits for: on an interactive stderr a spinner with the
    current condition's reason and the elapsed time; otherwise one line each time the
    reason changes (so a log shows why it took long, or why it stopped)."""
    console = err_console()
    if not console.is_terminal:
        said: list[str] = []

        def on_change(sb: Sandbox) -> None:
            reason = waiting_reason(sb)
            if reason != "Ready" and (not said or said[-1] != reason):
                said.append(reason)
                console.print(f"waiting for sandbox {name}: {reason}", soft_wrap=True)

        return client.sandboxes.wait_ready(name, timeout, on_change)
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(f"waiting for sandbox {name} to be Ready", total=None)

        def on_poll(sb: Sandbox) -> None:
            progress.update(task, description=f"waiting for sandbox {name}: {waiting_reason(sb)}")

        return client.sandboxes.wait_ready(name, timeout, on_poll)


def delete_all(
    resource: Resource[Any], names: list[str], missing_ok: bool, wait: float | None = None
) -> None:
    """Delete each name; with `wait` (seconds), also watch each one until it is gone."""
    out = err_console()
    for name in names:
        try:
            resource.delete(name)
        except NotFound:
            if not missing_ok:
                raise
            out.print(f"{resource.kind.label} {name} not found (ignored)")
            continue
        if wait is None:
            out.print(f"{resource.kind.label} {name} deleted")
            continue
        wait_gone(resource, name, wait, out)


def wait_gone(resource: Resource[Any], name: str, timeout: float, out: Console) -> None:
    """Poll until `name` is gone (404), printing each change of what its deletion waits for
    (a sandbox with fork workloads is Terminating: routes withdrawn, then the workloads, then
    the record). WaitTimeout (exit 8) at the deadline, naming what was left."""
    label = resource.kind.label
    deadline = time.monotonic() + timeout
    interval = 0.1
    shown = ""
    while True:
        try:
            item = resource.get(name)
        except NotFound:
            out.print(f"{label} {name} deleted")
            return
        now = deletion_progress(item)
        if now != shown:
            out.print(f"{label} {name}: {now}")
            shown = now
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeout(f"{label} {name} still there after {timeout:g}s: {shown}")
        time.sleep(min(interval, remaining))  # polling the API, with a deadline
        interval = min(1.0, interval * 1.5)


def deletion_progress(item: Any) -> str:
    """What a deletion in progress waits for, in a few words."""
    status = getattr(item, "status", None)
    phase = getattr(status, "phase", None) or "deleting"
    if not isinstance(item, Sandbox) or status is None:
        return phase
    left = [w for w in status.workloads if w.created]
    if phase == "Terminating" and left:
        names = ", ".join(f"{w.namespace}/{w.name}" for w in left)
        return f"Terminating: routes withdrawn, removing {len(left)} workload(s) ({names})"
    if phase == "Terminating":
        return "Terminating: workloads removed, removing the record"
    return phase


def model_from_flags(
    model: type[M], name: str, label: Sequence[str] | None, spec: dict[str, Any]
) -> M:
    doc = {"metadata": {"name": name, "labels": parse_pairs(label, "--label")}, "spec": spec}
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise validation_problem("flags", exc) from None
