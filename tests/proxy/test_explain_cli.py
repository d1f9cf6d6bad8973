"""`python -m forklane.proxy explain` and `python -m forklane.proxy schema`, run as the operator runs them.

The main cases start the real command in a subprocess and read its stdout, stderr and exit
code: text and JSON output for a described request, exit 2 with one line on stderr (never a
traceback) for a bad config or a bad `-H`, and a JSON Schema that really describes the file
format. The many variants run the same `main()` in this process (`Result` has the same
shape), because each interpreter start costs about a second on a busy machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from forklane.proxy.__main__ import main
from forklane.proxy.schema import RoutingSnapshot

ROOT = Path(__file__).resolve().parents[2]

CONFIG = """\
version: "cli-1"
services:
  - name: catalog
    authorities: ["catalog.prod:8080"]
    endpoints: ["10.0.0.1:80"]
  - name: pricing
    endpoints: ["10.0.0.2:80", "10.0.0.3:80"]
forks:
  - routing_key: alice-7f3a
    service: pricing
    endpoints: ["10.1.0.1:80"]
    fallback: baseline
    sandbox: alice
splits:
  - name: beta
    service: catalog
    match: {headers: [{name: x-beta, present: true}]}
    destinations: [{name: v2, weight: 1, endpoints: ["10.2.0.1:80"]}]
mirrors:
  - name: shadow
    service: catalog
    percent: 100
    endpoints: ["10.3.0.1:80"]
"""


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


def run(*args: str | Path, timeout: float = 30) -> Result:
    """The real command line, in a subprocess."""
    done = subprocess.run(
        [sys.executable, "-m", "forklane.proxy", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Result(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """The same `main()` in this process, for the many small variants."""

    def call(*args: str | Path) -> Result:
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return call


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "routing.yaml"
    path.write_text(CONFIG)
    return path


def assert_usage_error(result: Result, *fragments: str) -> None:
    """Exit 2, nothing on stdout, exactly one line on stderr that says what is wrong."""
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_text_output_for_a_fork(config: Path) -> None:
    result = run(
        "explain",
        "--config",
        config,
        "--host",
        "pricing",
        "-H",
        "X-Forklane-Routing-Key: alice-7f3a",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["fork", "→", "fork/pricing@alice-7f3a"]
    assert "endpoints  10.1.0.1:80" in lines
    assert "rule       forks[0]" in lines
    assert "reason     routing key alice-7f3a forks pricing (sandbox alice)" in lines
    assert "key        alice-7f3a (from header:x-forklane-routing-key)" in lines
    assert "fallback   baseline/pricing" in lines


def test_json_output_for_a_split_with_a_mirror(config: Path) -> None:
    result = run(
        "explain",
        "--config",
        config,
        "--host",
        "Catalog.Prod:8080",
        "--method",
        "post",
        "-H",
        "x-beta: yes",
        "-H",
        "x-not-routing: ignored",
        "-o",
        "json",
    )
    assert result.returncode == 0, result.stderr
    body: dict[str, Any] = json.loads(result.stdout)
    assert body["kind"] == "split"
    assert body["service"] == "catalog"
    assert body["destination"] == "split/catalog/beta/v2"
    assert body["rule"] == "splits[beta]"
    assert body["mirrors"] == ["mirror/catalog/shadow"]
    assert body["routing_key"] is None
    assert body["table_version"] == "cli-1"


def test_host_may_come_from_a_host_header(config: Path, cli: Callable[..., Result]) -> None:
    result = cli("explain", "--config", config, "-H", "Host: pricing", "-o", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["destination"] == "baseline/pricing"


def test_conflicting_carriers_are_explained(config: Path, cli: Callable[..., Result]) -> None:
    result = cli(
        "explain",
        "--config",
        config,
        "--host",
        "pricing",
        "-H",
        "x-forklane-routing-key: alice-7f3a",
        "-H",
        "baggage: forklane-routing-key=bob",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].split() == ["baseline", "→", "baseline/pricing"]
    assert "key        - — carriers disagreed, key ignored" in result.stdout.splitlines()


def test_unknown_authority_is_explained_as_a_local_answer(
    config: Path, cli: Callable[..., Result]
) -> None:
    result = cli("explain", "--config", config, "--host", "inventory")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].split() == [
        "reject",
        "→",
        "local",
        "answer",
        "404",
        "(no-route)",
    ]


def test_inbound_listener_with_a_local_service(config: Path, cli: Callable[..., Result]) -> None:
    base = ("explain", "--config", config, "--listener", "inbound", "--service", "pricing")
    forked = cli(*base, "-H", "x-forklane-routing-key: alice-7f3a", "-o", "json")
    local = cli(*base, "--local-app", "127.0.0.1:9999", "-o", "json")
    assert forked.returncode == 0 and local.returncode == 0, forked.stderr + local.stderr
    assert json.loads(forked.stdout)["destination"] == "fork/pricing@alice-7f3a"
    body = json.loads(local.stdout)
    assert (body["kind"], body["endpoints"]) == ("local", ["127.0.0.1:9999"])


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        (
            "version: v1\nservices: [{name: a, endpoints: ['10.0.0.1']}]\n",
            ["routing.yaml: services.0.endpoints", "expected host:port"],
        ),
        ('{"version": "v1", "services": 3', ["routing.yaml", "Expecting"]),
        ("- just\n- a list\n", ["routing.yaml: expected a mapping"]),
    ],
    ids=["schema", "json syntax", "not a mapping"],
)
def test_bad_config_exits_2_with_one_line(
    tmp_path: Path, text: str, fragments: list[str], cli: Callable[..., Result]
) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(text)
    assert_usage_error(cli("explain", "--config", path, "--host", "a"), *fragments)


def test_bad_config_exits_2_from_the_real_command(tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text("version: v1\nservices: [{name: a, endpoints: ['10.0.0.1:0']}]\n")
    assert_usage_error(
        run("explain", "--config", path, "--host", "a"),
        f"forklane proxy explain: {path}: services.0.endpoints",
        "port must be 1..65535",
    )


def test_yaml_syntax_error_exits_2_with_one_line(
    tmp_path: Path, cli: Callable[..., Result]
) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text("version: v1\nservices:\n  - name: a\n   endpoints: [x]\n")
    assert_usage_error(cli("explain", "--config", path, "--host", "a"), "routing.yaml", "line 4")


def test_missing_config_file_exits_2(tmp_path: Path, cli: Callable[..., Result]) -> None:
    assert_usage_error(
        cli("explain", "--config", tmp_path / "nope.yaml", "--host", "a"), "nope.yaml: cannot read"
    )


def test_bad_local_app_exits_2(config: Path, cli: Callable[..., Result]) -> None:
    result = cli(
        "explain",
        "--config",
        config,
        "--listener",
        "inbound",
        "--service",
        "pricing",
        "--local-app",
        "no-port",
    )
    assert_usage_error(result, "no-port")


@pytest.mark.parametrize("header", ["no-colon-here", ": value-without-name", "   : x"])
def test_bad_header_exits_2_with_one_line(
    config: Path, header: str, cli: Callable[..., Result]
) -> None:
    assert_usage_error(
        cli("explain", "--config", config, "--host", "pricing", "-H", header),
        "expected 'NAME: VALUE'",
    )


def test_bad_header_exits_2_from_the_real_command(config: Path) -> None:
    result = run("explain", "--config", config, "--host", "pricing", "-H", "x-user=1")
    assert_usage_error(result, "forklane proxy explain: header 'x-user=1'")


def test_outbound_request_without_host_exits_2(config: Path, cli: Callable[..., Result]) -> None:
    assert_usage_error(cli("explain", "--config", config), "outbound requests need a host")


def test_schema_prints_the_json_schema_of_the_routing_file() -> None:
    result = run("schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert schema == RoutingSnapshot.model_json_schema()
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(RoutingSnapshot.model_fields)
    assert schema["required"] == ["version"]
    # Every reference resolves inside the document: tools can use it offline.
    defs = schema["$defs"]
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "$ref" in node:
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    assert refs
    for ref in refs:
        assert ref.startswith("#/$defs/")
        assert ref.removeprefix("#/$defs/") in defs
    for name in ("Service", "Fork", "Split", "Mirror", "Carrier", "HeaderMatch", "Sticky"):
        assert name in defs
    assert defs["Carrier"]["properties"]["kind"]["enum"] == ["header", "baggage", "tracestate"]


def test_repeated_fields_stay_repeated_as_on_the_wire(
    config: Path, cli: Callable[..., Result]
) -> None:
    # The key is in the first of two baggage fields: a proxy joins them and finds it;
    # collapsing them into one (the last) would say baseline.
    result = cli("explain", "--config", config, "--host", "pricing", "-o", "json",
                 "-H", "baggage: forklane-routing-key=alice-7f3a", "-H", "baggage: other=1")
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["kind"] == "fork" and body["carrier"] == "baggage:forklane-routing-key"
