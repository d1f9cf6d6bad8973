"""Every exit code the CLI can give is documented, in the README and in `forklane --help`,
and the README documents no code the CLI does not use."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from forklane.cli import EXIT_CODES

ROOT = Path(__file__).resolve().parents[2]
USED = {0, 1, 2, 130, *EXIT_CODES.values()}  # ok, error, usage, interrupted, then by error


def test_the_readme_documents_exactly_the_exit_codes_used() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("Exit codes (`forklane --help` lists them too):")
    paragraph = readme[start : readme.index("`forklane proxy` and", start)]
    documented = {int(n) for n in re.findall(r"(?:[:,]\s+)(\d+) [a-z]", paragraph)}
    assert documented == USED, paragraph


def test_help_lists_every_exit_code_used() -> None:
    shown = subprocess.run([sys.executable, "-m", "forklane", "--help"], capture_output=True,
                           text=True, timeout=60, check=True).stdout  # fmt: skip
    epilog = shown[shown.index("Exit codes:"):]
    listed = {int(n) for n in re.findall(r"(?:^|\s)(\d+)\s+[a-z]", epilog, re.M)}
    assert USED <= listed, epilog
