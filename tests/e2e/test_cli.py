"""The `forklane` CLI end to end: real subprocesses against a real control plane.

Each test runs the CLI as a user would (`python -m sdk`, the same `sdk.cli:main` the
installed `forklane` script calls) and checks what a user or a script sees: output that
parses (`-o json`, `-o yaml`), tables that fit, one-line errors, and the documented exit
codes (0 ok, 1 error, 2 usage, 3 not found, 4 conflict, 5 unauthorized/forbidden,
6 invalid, 7 unavailable, 8 timeout, 9 failed while waiting).
"""

from __future__ import annotations

import json
import os
import pty
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from forklane import Client
from forklane.controlplane.wire import ServiceResource
from tests.sdk.controlplane_proc import (
    ADMIN_TOKEN,
    REPO,
    ControlPlane,
    controlplane_missing,
    start_controlplane,
    tcp_listener,
)
from tests.support.processes import start_proxy


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def run_cli(
    *args: str, env: dict[str, str], stdin: str | None = None, timeout: float = 60
) -> Result:
    done = subprocess.run(
        [sys.executable, "-m", "forklane", *args],
        cwd=REPO,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Result(done.returncode, done.stdout, done.stderr)


def base_env(home: Path) -> dict[str, str]:
    """No ambient forklane configuration leaks in from the machine running the tests."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORKLANE_")}
    env.update(HOME=str(home), FORKLANE_CLIENT_CONFIG=str(home / "forklane.yaml"), COLUMNS="100",
               PYTHONPATH=str(REPO))  # fmt: skip
    return env


def one_error_line(result: Result) -> str:
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.err
    return lines[0]


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return base_env(tmp_path)


@pytest.fixture
def listener() -> Iterator[str]:
    with tcp_listener() as endpoint:
        yield endpoint


@pytest.fixture
def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture(scope="module")
def controlplane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    reason = controlplane_missing()
    if reason:
        pytest.skip(reason)
    data_dir = tmp_path_factory.mktemp("cli-cp")
    running = start_controlplane(data_dir)
    try:
        yield ControlPlane(url=running.url, token=ADMIN_TOKEN, data_dir=data_dir)
    finally:
        running.stop()


@pytest.fixture
def cp_env(controlplane: ControlPlane, env: dict[str, str]) -> dict[str, str]:
    return {**env, "FORKLANE_URL": controlplane.url, "FORKLANE_TOKEN": controlplane.token}


@pytest.fixture
def svc(controlplane: ControlPlane, listener: str) -> str:
    """A baseline service, created through the SDK (setup, not the thing under test)."""
    name = unique("svc")
    resource = ServiceResource.model_validate(
        {"metadata": {"name": name},
         "spec": {"endpoints": [listener], "authorities": [f"{name}.test"]}}
    )  # fmt: skip
    with Client(controlplane.url, controlplane.token) as client:
        client.services.create(resource)
    return name


# --- local behaviour (no control plane needed) ------------------------------------------------


def test_help_lists_commands_and_documents_exit_codes(env: dict[str, str]) -> None:
    result = run_cli("--help", env=env)
    assert result.code == 0
    for command in ("sandbox", "routegroup", "split", "service", "explain", "proxies",
                    "context", "login", "proxy", "controlplane", "demo"):  # fmt: skip
        assert command in result.out
    for line in ("3  not found", "7  unavailable", "8  timeout"):
        assert line in result.out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("sandbox", "create"), "-f FILE or at least one --fork"),
        (("sandbox", "create", "--fork", "pricing"), "SERVICE=HOST:PORT"),
        (("split", "set", "pricing", "--dest", "v1=h:1"), "NAME=HOST:PORT:WEIGHT"),
        (("sandbox", "list", "-o", "xml"), "xml"),
    ],
)
def test_usage_errors_exit_2_with_the_reason(
    env: dict[str, str], args: tuple[str, ...], message: str
) -> None:
    result = run_cli(*args, env=env)
    assert result.code == 2, (result.out, result.err)
    assert message in result.err
    assert "Traceback" not in result.err


def test_unreachable_control_plane_exits_7_with_one_line(
    env: dict[str, str], closed_port: str
) -> None:
    result = run_cli("sandbox", "list", env={**env, "FORKLANE_URL": f"http://{closed_port}"})
    assert result.code == 7
    line = one_error_line(result)
    assert closed_port in line and "unavailable" in line


def test_debug_shows_the_traceback(env: dict[str, str], closed_port: str) -> None:
    result = run_cli("--debug", "sandbox", "list",
                     env={**env, "FORKLANE_URL": f"http://{closed_port}"})  # fmt: skip
    assert result.code == 7
    assert "Traceback" in result.err


def test_shell_completion_completes_commands(env: dict[str, str]) -> None:
    completion = {"_FORKLANE_COMPLETE": "complete_bash", "COMP_WORDS": "forklane sand",
                  "COMP_CWORD": "1"}  # fmt: skip
    result = run_cli(env={**env, **completion})
    assert result.code == 0
    assert result.out.split() == ["sandbox"]


def test_controlplane_command_passes_arguments_through(env: dict[str, str]) -> None:
    result = run_cli("controlplane", "--help", env=env)
    assert result.code == 0
    assert "serve" in result.out and "forklane controlplane" in result.out


def test_proxy_command_passes_arguments_through(env: dict[str, str]) -> None:
    result = run_cli("proxy", "explain", "--help", env=env)
    assert result.code == 0
    assert "--config" in result.out


def test_contexts_set_use_list(env: dict[str, str]) -> None:
    first = run_cli("context", "set", "a", "--url", "http://a.test:1", "--token", "s3cret", env=env)
    assert first.code == 0, first.err
    assert run_cli("context", "set", "b", "--url", "http://b.test:2", "--use", env=env).code == 0
    doc = yaml.safe_load(run_cli("context", "list", "-o", "yaml", env=env).out)
    assert (doc["kind"], doc["currentContext"]) == ("ContextList", "b")
    assert {c["name"]: c["token"] for c in doc["items"]} == {"a": "<set>", "b": None}

    missing = run_cli("context", "use", "ghost", env=env)
    assert missing.code == 1 and "ghost" in one_error_line(missing)
    # commands use the current context: b points nowhere, so this is unavailable
    result = run_cli("sandbox", "list", env=env)
    assert result.code == 7 and "b.test" in result.err


# --- against a real control plane -------------------------------------------------------------


def test_sandbox_lifecycle(cp_env: dict[str, str], svc: str, listener: str) -> None:
    name = unique("sb")
    created = run_cli("sandbox", "create", "--fork", f"{svc}={listener}", "--name", name,
                      "--ttl", "10m", "--label", "team=pay", "--wait", "--timeout", "30",
                      "-o", "json", env=cp_env)  # fmt: skip
    assert created.code == 0, created.err
    doc = created.json()
    assert doc["kind"] == "Sandbox" and doc["metadata"]["name"] == name
    assert doc["status"]["phase"] == "Ready"
    key = doc["status"]["routingKey"]
    assert key and doc["spec"]["ttl"]["seconds"] == 600

    listed = run_cli("sandbox", "list", "-l", "team=pay", "-o", "yaml", env=cp_env)
    assert listed.code == 0
    items = yaml.safe_load(listed.out)["items"]
    assert name in [i["metadata"]["name"] for i in items]

    table = run_cli("sandbox", "get", name, env=cp_env)
    assert table.code == 0
    assert name in table.out and key in table.out and "Ready" in table.out
    assert all(len(line) <= 100 for line in table.out.splitlines())

    again = run_cli("sandbox", "create", "--fork", f"{svc}={listener}", "--name", name,
                    env=cp_env)  # fmt: skip
    assert again.code == 4
    one_error_line(again)

    extended = run_cli("sandbox", "extend", name, "--ttl", "2h", "-o", "json", env=cp_env)
    assert extended.code == 0, extended.err
    assert extended.json()["spec"]["ttl"]["seconds"] >= 7200

    assert run_cli("sandbox", "delete", name, env=cp_env).code == 0
    gone = run_cli("sandbox", "get", name, env=cp_env)
    assert gone.code == 3
    assert name in one_error_line(gone)


@pytest.mark.parametrize("shape", ["resource", "bare spec"])
def test_sandbox_from_file(
    cp_env: dict[str, str], svc: str, listener: str, tmp_path: Path, shape: str
) -> None:
    spec = {"forks": [{"service": svc, "endpoints": [listener]}], "ttl": {"seconds": 900}}
    name = unique("sb")
    doc: dict[str, Any] = {"apiVersion": "forklane.dev/v1", "kind": "Sandbox",
                           "metadata": {"name": name, "labels": {"from": "file"}},
                           "spec": spec}  # fmt: skip
    path = tmp_path / "sandbox.yaml"
    path.write_text(yaml.safe_dump(doc if shape == "resource" else spec))
    result = run_cli("sandbox", "create", "-f", str(path), "-l", "by=flag", "-o", "json",
                     env=cp_env)  # fmt: skip
    assert result.code == 0, result.err
    created = result.json()
    if shape == "resource":
        assert created["metadata"]["name"] == name
        assert created["metadata"]["labels"] == {"from": "file", "by": "flag"}
    else:
        assert created["metadata"]["name"].startswith("sandbox-")
        assert created["metadata"]["labels"] == {"by": "flag"}
    assert created["spec"]["ttl"]["seconds"] == 900
    run_cli("sandbox", "delete", created["metadata"]["name"], env=cp_env)


def test_waiting_for_an_unreachable_fork_times_out_with_exit_8(
    cp_env: dict[str, str], svc: str, closed_port: str
) -> None:
    name = unique("sb")
    result = run_cli("sandbox", "create", "--fork", f"{svc}={closed_port}", "--name", name,
                     "--wait", "--timeout", "1", env=cp_env)  # fmt: skip
    try:
        assert result.code == 8
        warning, *waiting, line = result.err.strip().splitlines()
        # the reason is known at once: the create answer carries it as a warning
        assert warning.startswith(f"Warning: fork {svc}: {closed_port}")
        # while it waits, it says what it waits for (one line per change of reason)
        assert waiting and waiting[-1].startswith(f"waiting for sandbox {name}: Pending: ")
        assert "ForkUnreachable" in "".join(waiting) and closed_port in "".join(waiting)
        assert "not Ready after 1s" in line and "phase Pending" in line and closed_port in line
    finally:
        run_cli("sandbox", "delete", name, env=cp_env)


def test_waiting_stops_at_once_on_a_fork_host_that_does_not_exist_with_exit_9(
    cp_env: dict[str, str], svc: str
) -> None:
    name = unique("sb")
    started = time.monotonic()
    result = run_cli("sandbox", "create", "--fork", f"{svc}=no-such-host.invalid:80",
                     "--name", name, "--wait", "--timeout", "60", env=cp_env)  # fmt: skip
    try:
        assert result.code == 9, result.err
        assert time.monotonic() - started < 30, "it waited although waiting cannot help"
        line = result.err.strip().splitlines()[-1]
        assert line.startswith(f"error: sandbox '{name}' cannot become Ready (ForkUnresolvable)")
        assert "no-such-host.invalid:80: no such host" in line
    finally:
        run_cli("sandbox", "delete", name, env=cp_env)


def test_waiting_shows_a_spinner_with_elapsed_time_on_a_terminal(
    cp_env: dict[str, str], svc: str, closed_port: str
) -> None:
    name = unique("sb")
    primary, secondary = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(primary, 4096)
            except OSError:  # the terminal closed: the CLI is gone
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "forklane", "sandbox", "create", "--fork", f"{svc}={closed_port}",
             "--name", name, "--wait", "--timeout", "1"],
            cwd=REPO, env={**cp_env, "TERM": "xterm"}, stdout=subprocess.PIPE,
            stderr=secondary, timeout=60, check=False,
        )  # fmt: skip
    finally:
        os.close(secondary)
        reader.join(timeout=10)
        os.close(primary)
        run_cli("sandbox", "delete", name, env=cp_env)
    shown = b"".join(chunks).decode("utf-8", "replace")
    assert done.returncode == 8
    assert f"waiting for sandbox {name}" in shown
    assert "0:00:0" in shown  # the elapsed-time column


def test_bad_token_exits_5(cp_env: dict[str, str]) -> None:
    result = run_cli("sandbox", "list", env={**cp_env, "FORKLANE_TOKEN": "wrong-token"})
    assert result.code == 5
    one_error_line(result)


def test_server_side_invalid_exits_6_naming_the_field(
    cp_env: dict[str, str], listener: str
) -> None:
    # an authority the wire schema refuses is now caught before sending (usage, exit 2);
    # a clash with another service's authority is only known to the server
    result = run_cli("service", "create", unique("svc"), "-e", listener, "-a", "Not A Host!",
                     env=cp_env)  # fmt: skip
    assert result.code == 2
    assert "spec.authorities" in one_error_line(result)


def test_split_set_then_change_weights(cp_env: dict[str, str], svc: str, listener: str) -> None:
    first = run_cli("split", "set", svc, "--dest", f"v1={listener}:90", "--dest",
                    f"v2={listener}:10", "--sticky-header", "x-user", "-o", "json", env=cp_env)  # fmt: skip
    assert first.code == 0, first.err
    doc = first.json()
    assert [(d["name"], d["weight"]) for d in doc["spec"]["destinations"]] == [
        ("v1", 90),
        ("v2", 10),
    ]
    assert doc["spec"]["sticky"] == {"header": "x-user"}
    second = run_cli("split", "set", svc, "--dest", f"v1={listener}:50", "--dest",
                     f"v2={listener}:50", "-o", "json", env=cp_env)  # fmt: skip
    assert second.code == 0, second.err
    assert [d["weight"] for d in second.json()["spec"]["destinations"]] == [50, 50]
    assert run_cli("split", "delete", svc, env=cp_env).code == 0
    assert run_cli("split", "get", svc, env=cp_env).code == 3


def test_routegroups_and_services_lists(cp_env: dict[str, str], svc: str) -> None:
    name = unique("rg")
    created = run_cli("routegroup", "create", name, "--selector", "team=pay", "-o", "json",
                      env=cp_env)  # fmt: skip
    assert created.code == 0, created.err
    assert created.json()["spec"]["selector"] == {"team": "pay"}
    listed = run_cli("routegroup", "list", "-o", "json", env=cp_env).json()
    assert listed["kind"] == "RouteGroupList"
    assert name in [i["metadata"]["name"] for i in listed["items"]]

    services = run_cli("service", "list", "-o", "json", env=cp_env).json()
    assert svc in [i["metadata"]["name"] for i in services["items"]]


def test_proxies_lists_connected_proxies(cp_env: dict[str, str]) -> None:
    result = run_cli("proxies", "-o", "json", env=cp_env)
    assert result.code == 0, result.err
    assert result.json()["items"] == []


def test_explain_runs_the_proxys_decision_on_the_control_planes_snapshot(
    cp_env: dict[str, str], svc: str, listener: str
) -> None:
    name = unique("sb")
    created = run_cli("sandbox", "create", "--fork", f"{svc}={listener}", "--name", name,
                      "--routing-key", f"key{secrets.token_hex(4)}", "--wait", "-o", "json",
                      env=cp_env)  # fmt: skip
    assert created.code == 0, created.err
    key = created.json()["status"]["routingKey"]
    try:
        baseline = run_cli("explain", "--host", f"{svc}.test", "-o", "json", env=cp_env)
        assert baseline.code == 0, baseline.err
        assert baseline.json()["kind"] == "baseline"
        text = run_cli("explain", "--host", f"{svc}.test", "-H", f"baggage: forklane-routing-key={key}",
                       env=cp_env)  # fmt: skip
        assert text.code == 0 and "fork" in text.out and key in text.out
    finally:
        run_cli("sandbox", "delete", name, env=cp_env)


def test_explain_asks_a_running_proxys_admin_port(env: dict[str, str], tmp_path: Path) -> None:
    proxy = start_proxy(REPO / "examples" / "static.yaml", tmp_path / "proxy.log")
    try:
        admin = proxy.url("admin")
        forked = run_cli("explain", "--proxy-admin", admin, "--host", "pricing",
                         "-k", "alice-7f3a", "-o", "json", env=env)  # fmt: skip
        assert forked.code == 0, forked.err
        decision = forked.json()
        assert (decision["kind"], decision["routingKey"]) == ("fork", "alice-7f3a")
        assert decision["endpoints"] == ["127.0.0.1:9102"]
        text = run_cli("explain", "--proxy-admin", admin, "--host", "pricing", env=env)
        assert text.code == 0, text.err
        assert text.out.startswith("baseline") and "127.0.0.1:9002" in text.out
    finally:
        proxy.stop()
    gone = run_cli("explain", "--proxy-admin", admin, "--host", "pricing", env=env)
    assert gone.code == 7
    assert "proxy admin" in one_error_line(gone)


def test_login_saves_a_context_only_after_the_token_works(
    controlplane: ControlPlane, env: dict[str, str]
) -> None:
    bad = run_cli("login", "--url", controlplane.url, "--token", "nope", env=env)
    assert bad.code == 5
    assert not Path(env["FORKLANE_CLIENT_CONFIG"]).exists()

    good = run_cli("login", "--url", controlplane.url, "--token", controlplane.token,
                   "--context", "local", env=env)  # fmt: skip
    assert good.code == 0, good.err
    assert oct(Path(env["FORKLANE_CLIENT_CONFIG"]).stat().st_mode & 0o777) == "0o600"
    # no FORKLANE_URL/TOKEN: the saved current context is used
    listed = run_cli("sandbox", "list", "-o", "json", env=env)
    assert listed.code == 0, listed.err
    assert listed.json()["kind"] == "SandboxList"


def test_login_reads_the_token_from_stdin_so_it_is_never_on_a_command_line(
    controlplane: ControlPlane, env: dict[str, str]
) -> None:
    empty = run_cli("login", "--url", controlplane.url, env=env, stdin="")
    assert empty.code == 2 and "no token on stdin" in one_error_line(empty)
    bad = run_cli("login", "--url", controlplane.url, env=env, stdin="nope\n")
    assert bad.code == 5 and not Path(env["FORKLANE_CLIENT_CONFIG"]).exists()
    good = run_cli("login", "--url", controlplane.url, env=env, stdin=controlplane.token + "\n")
    assert good.code == 0, good.err
    assert controlplane.token not in good.out + good.err
    saved = yaml.safe_load(Path(env["FORKLANE_CLIENT_CONFIG"]).read_text())
    assert saved["contexts"][0]["token"] == controlplane.token
    status = run_cli("auth", "status", "-o", "json", env=env)
    assert status.code == 0 and status.json()["role"] == "admin", status.out + status.err


# --- kubectl habits ------------------------------------------------------------------------------


def test_apply_twice_is_a_no_op_then_delete_f(
    cp_env: dict[str, str], listener: str, tmp_path: Path
) -> None:
    svc, sb = unique("svc"), unique("sb")
    path = tmp_path / "all.yaml"
    path.write_text(f"""\
apiVersion: forklane.dev/v1
kind: Sandbox
metadata: {{name: {sb}, labels: {{team: pay}}}}
spec:
  forks: [{{service: {svc}, endpoints: ["{listener}"]}}]
---
kind: Service
metadata: {{name: {svc}}}
spec: {{endpoints: ["{listener}"], authorities: ["{svc}.test"]}}
""")
    first = run_cli("apply", "-f", str(path), env=cp_env)
    assert first.code == 0, first.err
    assert first.out.splitlines() == [f"service/{svc} created", f"sandbox/{sb} created"]
    dry = run_cli("apply", "-f", "-", "--dry-run=server", env=cp_env, stdin=path.read_text())
    assert dry.out.splitlines() == [f"service/{svc} unchanged (server dry run)",
                                    f"sandbox/{sb} unchanged (server dry run)"]  # fmt: skip
    again = run_cli("apply", "-f", str(path), env=cp_env)
    assert again.out.splitlines() == [f"service/{svc} unchanged", f"sandbox/{sb} unchanged"]
    names = run_cli("get", "sb", "-l", "team in (pay,ops),!legacy", "-o", "name", env=cp_env)
    assert f"sandbox/{sb}" in names.out.splitlines()
    other = run_cli("get", "sb", "-l", "team!=pay", "-o", "name", env=cp_env)
    assert f"sandbox/{sb}" not in other.out.splitlines()
    path_out = run_cli("get", f"sb/{sb}", "-o", "jsonpath={.spec.forks[0].service}", env=cp_env)
    assert path_out.out.strip() == svc
    gone = run_cli("delete", "-f", str(path), env=cp_env)
    assert gone.code == 0 and gone.out.splitlines() == [f"sandbox/{sb} deleted",
                                                        f"service/{svc} deleted"]  # fmt: skip
    assert run_cli("get", "sb", sb, env=cp_env).code == 3


def test_apply_of_an_unknown_service_exits_6_naming_the_field(
    cp_env: dict[str, str], listener: str
) -> None:
    doc = f"kind: Sandbox\nmetadata: {{name: {unique('sb')}}}\nspec:\n  forks: " \
          f"[{{service: {unique('ghost')}, endpoints: ['{listener}']}}]\n"  # fmt: skip
    result = run_cli("apply", "-f", "-", env=cp_env, stdin=doc)
    assert result.code == 6
    assert "spec.forks[0].service" in one_error_line(result)


def test_get_watch_sees_a_change(cp_env: dict[str, str], svc: str, listener: str) -> None:
    name = unique("sb")
    watcher = subprocess.Popen(
        [sys.executable, "-m", "forklane", "get", "sandboxes", "-w", "-o", "name"],
        cwd=REPO, env=cp_env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        created = run_cli("sandbox", "create", "--fork", f"{svc}={listener}", "--name", name,
                          env=cp_env)  # fmt: skip
        assert created.code == 0, created.err
        assert watcher.stdout is not None
        for line in watcher.stdout:  # blocks until the watch prints; bounded by the kill below
            if line.strip() == f"sandbox/{name}":
                break
    finally:
        watcher.kill()
        watcher.wait(timeout=10)
        if watcher.stdout is not None:
            watcher.stdout.close()
        run_cli("sandbox", "delete", name, env=cp_env)


def test_version_tokens_and_auth_status(cp_env: dict[str, str]) -> None:
    version = run_cli("version", "-o", "json", env=cp_env)
    assert version.code == 0, version.err
    doc = version.json()
    assert doc["clientVersion"] == doc["controlPlaneVersion"] and doc["proxies"] == []
    subject = unique("sidecar")
    token = run_cli("token", "create", "--role", "proxy", "--subject", subject,
                    "-o", "jsonpath={.token}", env=cp_env).out.strip()  # fmt: skip
    assert token.startswith("flk_")
    status = run_cli("auth", "status", "-o", "json", env={**cp_env, "FORKLANE_TOKEN": token})
    assert (status.json()["subject"], status.json()["role"]) == (subject, "proxy")
    listed = run_cli("token", "list", "-o", "json", env=cp_env).json()
    (mine,) = [t for t in listed["items"] if t["subject"] == subject]
    assert run_cli("token", "revoke", mine["id"], env=cp_env).code == 0
    after = run_cli("auth", "status", env={**cp_env, "FORKLANE_TOKEN": token})
    assert after.code == 5


@pytest.mark.parametrize("args", [("get",), ("get", "pods"), ("--url", "localhost:8080", "get", "sb")])
def test_usage_errors_are_one_line(env: dict[str, str], args: tuple[str, ...]) -> None:
    result = run_cli(*args, env=env)
    assert result.code == 2
    one_error_line(result)


def test_a_developer_token_of_a_tenant_and_what_get_and_describe_show(
    cp_env: dict[str, str], svc: str, listener: str
) -> None:
    who = unique("dev")
    token = run_cli("token", "create", "--role", "developer", "--subject", who, "--tenant",
                    "team-a", "-o", "jsonpath={.token}", env=cp_env).out.strip()  # fmt: skip
    assert token.startswith("flk_")
    dev_env = {**cp_env, "FORKLANE_TOKEN": token}
    status = run_cli("auth", "status", env=dev_env)
    assert status.code == 0 and "Tenant:        team-a" in status.out, status.out
    listed = run_cli("token", "list", env=cp_env)
    assert any(who in line and "team-a" in line for line in listed.out.splitlines()), listed.out
    refused = run_cli("token", "create", "--role", "proxy", "--subject", who, "--tenant",
                      "team-a", env=cp_env)  # fmt: skip
    assert refused.code == 2 and "--tenant" in one_error_line(refused)

    name = unique("sb")
    made = run_cli("sandbox", "create", "--fork", f"{svc}={listener}", "--name", name,
                   "-o", "json", env=dev_env)  # fmt: skip
    assert made.code == 0 and made.json()["metadata"]["tenant"] == "team-a", made.err
    wide = run_cli("get", "sb", name, "-o", "wide", env=dev_env)
    assert "TENANT" in wide.out and "team-a" in wide.out, wide.out
    described = run_cli("describe", "sb", name, env=dev_env)
    assert "Tenant:       team-a" in described.out, described.out
    mine = run_cli("get", "sb", "--tenant", "team-a", "-o", "json", env=cp_env).json()
    assert [i["metadata"]["name"] for i in mine["items"]] == [name]  # an admin's view of one team
    shared = run_cli("get", "svc", "--tenant", "team-a", env=cp_env)
    assert shared.code == 2 and "shared" in one_error_line(shared)
    other = run_cli("token", "create", "--role", "developer", "--subject", unique("dev"),
                    "--tenant", "team-b", "-o", "jsonpath={.token}", env=cp_env).out.strip()
    hidden = run_cli("describe", "sb", name, env={**cp_env, "FORKLANE_TOKEN": other})
    assert hidden.code == 3 and "not found" in one_error_line(hidden)
    assert run_cli("sandbox", "delete", name, env=dev_env).code == 0
