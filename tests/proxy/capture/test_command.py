"""`forklane proxy capture` as a user runs it: through the CLI, without root (dry run, bad
flags). Applying the rules for real is in tests/integration/test_capture_netns.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FORKLANE = Path(sys.executable).with_name("forklane")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "forklane.proxy", "capture", *args],
                          capture_output=True, text=True, timeout=60)


def test_dry_run_prints_both_families_through_the_forklane_cli() -> None:
    if not FORKLANE.exists() and shutil.which("forklane") is None:
        pytest.skip("the forklane console script is not installed")
    cli = str(FORKLANE) if FORKLANE.exists() else "forklane"
    done = subprocess.run([cli, "proxy", "capture", "--dry-run", "--proxy-uid", "7",
                           "--inbound-ports", "8080", "--exclude-outbound-cidrs",
                           "10.96.0.0/12"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "iptables -t nat -A FORKLANE_OUTPUT -m owner --uid-owner 7 -j RETURN" in lines
    assert "iptables -t nat -A FORKLANE_OUTPUT -d 10.96.0.0/12 -j RETURN" in lines
    assert ("iptables -t nat -A FORKLANE_INBOUND -p tcp --dport 8080 -j FORKLANE_IN_REDIRECT"
            in lines)
    assert "ip6tables -t nat -A FORKLANE_OUTPUT -d ::1/128 -j RETURN" in lines


@pytest.mark.parametrize("args, message", [
    (("--proxy-uid", "istio"), "--proxy-uid: 'istio' is not a numeric UID"),
    (("--outbound-port", "15001,15002"), "--outbound-port: '15001,15002': expected one port"),
    (("--exclude-outbound-ports", "99999"), "--exclude-outbound-ports: '99999' is not a port"),
    (("--include-outbound-cidrs", "10.0.0.0/33"), "--include-outbound-cidrs: '10.0.0.0/33'"),
])
def test_bad_flags_exit_2_with_one_line(args: tuple[str, ...], message: str) -> None:
    done = run("--dry-run", *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_dry_run_and_uninstall_do_not_go_together() -> None:
    done = run("--dry-run", "--uninstall")
    assert done.returncode == 2 and "not allowed with argument" in done.stderr
