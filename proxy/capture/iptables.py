"""Running the capture rules: pick the iptables backend the kernel uses, apply atomically.

Backend choice (per address family), as Istio's `DetectIptablesVersion` does it, plus one
rule of our own first:
1. a backend whose nat table already holds forklane's chains: a re-run replaces them there;
2. `iptables-legacy` when its tables hold any rule (the node's tools use legacy);
3. `iptables-nft` when it works;
4. `iptables-legacy` when it works; 5. plain `iptables`.
`--iptables-backend nft|legacy` skips the guess (Istio's FORCE_IPTABLES_BINARY).

Errors become `CaptureError` with one clear sentence: no iptables binary, no permission (the
init container needs root with NET_ADMIN and NET_RAW), a kernel without the nat table.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from forklane.proxy.capture.rules import Family

__all__ = ["Backend", "BackendChoice", "CaptureError", "Runner", "choose_backend"]

BackendChoice = Literal["auto", "nft", "legacy"]
Runner = Callable[[Sequence[str], str | None], "subprocess.CompletedProcess[str]"]

_PERMISSION_HINTS = ("Permission denied", "Operation not permitted", "you must be root")
_NO_NAT_HINTS = ("Table does not exist", "can't initialize", "does not exist")


class CaptureError(Exception):
    """Capture could not be installed or removed; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Backend:
    """One iptables flavour for one address family."""

    name: str  # "nft", "legacy" or "iptables" (the plain binary)
    family: Family
    save: str
    restore: str

    @property
    def label(self) -> str:
        return self.restore.removesuffix("-restore")

    def run(self, runner: Runner, args: Sequence[str], stdin: str | None = None) -> str:
        """Run one of this backend's binaries; a failure becomes a `CaptureError`."""
        try:
            done = runner(args, stdin)
        except FileNotFoundError:
            raise CaptureError(f"{args[0]} is not installed") from None
        except PermissionError as exc:
            raise CaptureError(f"cannot run {args[0]}: {exc}") from None
        if done.returncode != 0:
            raise CaptureError(_explain(args[0], done.stderr or done.stdout, done.returncode))
        return done.stdout

    def save_nat(self, runner: Runner) -> str:
        return self.run(runner, [self.save, "-t", "nat"])

    def restore_noflush(self, runner: Runner, script: str) -> None:
        args = [self.restore, "--noflush"]
        if self.name == "legacy":
            args.append("--wait=30")  # legacy serialises writers on the xtables lock
        self.run(runner, args, script)


def _explain(binary: str, stderr: str, code: int) -> str:
    text = " ".join(stderr.split())
    if any(hint in text for hint in _PERMISSION_HINTS):
        return (f"permission denied ({binary}): capture must run as root with the NET_ADMIN "
                f"and NET_RAW capabilities (the init container's securityContext)")
    if any(hint in text for hint in _NO_NAT_HINTS):
        return f"{binary}: the kernel offers no nat table here ({text})"
    return f"{binary} failed (exit {code}): {text or 'no output'}"


def default_runner(args: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), input=stdin, capture_output=True, text=True, timeout=60,
                          check=False)


def _candidates(family: Family) -> dict[str, Backend]:
    base = "iptables" if family == 4 else "ip6tables"
    out = {}
    for name, stem in (("legacy", f"{base}-legacy"), ("nft", f"{base}-nft"), ("iptables", base)):
        out[name] = Backend(name, family, f"{stem}-save", f"{stem}-restore")
    return out


def _installed(backend: Backend, which: Callable[[str], str | None]) -> bool:
    return which(backend.save) is not None and which(backend.restore) is not None


def choose_backend(
    family: Family,
    choice: BackendChoice = "auto",
    runner: Runner = default_runner,
    which: Callable[[str], str | None] = shutil.which,
) -> tuple[Backend, str]:
    """The backend to use and the nat table it holds now (`iptables-save -t nat`)."""
    candidates = _candidates(family)
    if choice != "auto":
        backend = candidates[choice]
        if not _installed(backend, which):
            raise CaptureError(f"{backend.restore} is not installed (--iptables-backend {choice})")
        return backend, backend.save_nat(runner)
    installed = [b for b in candidates.values() if _installed(b, which)]
    if not installed:
        base = "iptables" if family == 4 else "ip6tables"
        raise CaptureError(f"no {base} binary found on PATH: install the iptables package "
                           f"(Debian's has both iptables-nft and iptables-legacy)")
    usable: list[tuple[Backend, str]] = []
    errors: list[CaptureError] = []
    for backend in installed:
        try:
            usable.append((backend, backend.save_nat(runner)))
        except CaptureError as exc:
            if str(exc).startswith("permission denied"):
                raise
            errors.append(exc)
    if not usable:
        raise errors[0]
    for backend, saved in usable:
        if ":FORKLANE_" in saved:
            return backend, saved
    by_name = dict((b.name, (b, saved)) for b, saved in usable)
    if "legacy" in by_name and _has_rules(by_name["legacy"][0], runner):
        return by_name["legacy"]
    for name in ("nft", "legacy", "iptables"):
        if name in by_name:
            return by_name[name]
    raise errors[0]  # pragma: no cover - usable is never empty here


def _has_rules(backend: Backend, runner: Runner) -> bool:
    """Whether any table of this backend holds a rule (Istio's hint that the node uses it).
    Only tables that already exist are dumped, so this instantiates nothing."""
    try:
        saved = backend.run(runner, [backend.save])
    except CaptureError:
        return False
    return any(line.startswith("-A ") for line in saved.splitlines())
