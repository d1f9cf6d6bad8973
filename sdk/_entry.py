"""The `forklane` console script: a front door that works whatever extras are installed.

`forklane proxy …` and `forklane controlplane …` exec `python -P -m forklane.proxy|controlplane`
straight away (the sidecar never loads the CLI framework, and `-P` keeps the working
directory off `sys.path`, so a local `proxy.py` or `forklane.py` can never run instead of
ours). Everything else is the typer CLI of the `cli` extra; without it, or without the
component's extra, the user gets one line saying what to install, and exit code 1.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from forklane._extras import install_hint, missing

__all__ = ["exec_component", "main"]

_COMPONENTS = {"proxy": "forklane.proxy", "controlplane": "forklane.controlplane"}


def exec_component(name: str, args: Sequence[str]) -> NoReturn:
    """Replace this process with `python -P -m forklane.<name> ARGS`."""
    if missing(name):
        sys.stderr.write(f"error: {install_hint(name, f'forklane {name}')}\n")
        sys.exit(1)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-P", "-m", _COMPONENTS[name], *args])


def main(argv: Sequence[str] | None = None) -> NoReturn:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in _COMPONENTS:
        exec_component(args[0], args[1:])
    if missing("cli"):
        sys.stderr.write(f"error: {install_hint('cli', 'the forklane command line')}\n")
        sys.exit(1)
    from forklane.cli import main as cli_main

    cli_main(args)
