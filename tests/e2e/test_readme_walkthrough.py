"""The README's CLI walkthrough, run exactly as written, checked against its own comments.

The block between `<!-- walkthrough:start -->` and `<!-- walkthrough:end -->` runs in bash,
in a fresh network namespace with its own loopback (so its fixed ports never meet another
process on this machine) and a fresh PID namespace (so everything it started dies with it),
from an empty directory with an empty home. Every `# prints: TEXT` comment must be met, in
order, by the output. Needs root for the namespaces; skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"<!-- walkthrough:start -->\n```bash\n(.*?)```\n<!-- walkthrough:end -->", re.S)


def walkthrough() -> str:
    found = BLOCK.search((ROOT / "README.md").read_text())
    assert found, "README.md has no walkthrough block"
    return found.group(1)


def test_every_expectation_is_a_comment_of_a_command() -> None:
    expected = re.findall(r"# prints: (.+)$", walkthrough(), re.M)
    assert len(expected) >= 10


def _namespaces_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root for a private network namespace"
    if not (shutil.which("unshare") and shutil.which("ip") and shutil.which("curl")):
        return "needs unshare, ip and curl (util-linux, iproute2, curl)"
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False)
    if probe.returncode:
        return f"cannot make a network namespace here: {probe.stderr.decode().strip()}"
    return None


@pytest.mark.slow
def test_the_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    reason = _namespaces_missing()
    if reason:
        pytest.skip(reason)
    script = tmp_path / "walkthrough.sh"
    script.write_text(walkthrough())
    bin_dir = Path(sys.executable).parent
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORKLANE_")}
    env.update(HOME=str(home), PATH=f"{bin_dir}:{env.get('PATH', '')}", COLUMNS="200",
               FORKLANE_CLIENT_CONFIG=str(home / "config.yaml"))  # fmt: skip
    try:
        done = subprocess.run(
            ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "bash", "-c",
             f"ip link set lo up && exec bash -e -o pipefail {script}"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired as stuck:  # say where it stopped, with the logs
        pytest.fail(f"the walkthrough did not finish in {stuck.timeout:g}s:\n"
                    f"{_text(stuck.stdout)}{_text(stuck.stderr)}{_logs(tmp_path)}")  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output + _logs(tmp_path)
    position = 0
    for text in re.findall(r"# prints: (.+)$", walkthrough(), re.M):
        at = done.stdout.find(text.strip(), position)
        assert at >= 0, f"expected {text.strip()!r} after position {position}:\n{output}"
        position = at
    # the block used the config file it was given, and left the user's home alone
    assert (home / "config.yaml").exists()
    assert [p.name for p in home.iterdir()] == ["config.yaml"]


def _text(data: str | bytes | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else data or ""


def _logs(where: Path) -> str:
    return "".join(
        f"\n--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
        for p in (where / "forklane-walkthrough").glob("*.log")
    )
