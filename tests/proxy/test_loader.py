"""Loading routing files (YAML, JSON) into snapshots, and noticing when they change.

Every failure must become one ConfigError that names the file and, for schema problems,
the field, because that message is all an operator sees when a reload is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from forklane.proxy.loader import FileWatcher, load_snapshot_file, parse_snapshot
from forklane.proxy.table import ConfigError, build_table

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

YAML = """\
# a comment
version: "v7"
services:
  - name: catalog
    authorities: [catalog.prod]
    endpoints: ["10.0.0.1:80"]
forks:
  - {routing_key: alice, service: catalog, endpoints: ["10.1.0.1:80"]}
"""

JSON = json.dumps(
    {
        "version": "v7",
        "services": [
            {"name": "catalog", "authorities": ["catalog.prod"], "endpoints": ["10.0.0.1:80"]}
        ],
        "forks": [{"routing_key": "alice", "service": "catalog", "endpoints": ["10.1.0.1:80"]}],
    },
    indent=2,
)


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    return path


def test_yaml_and_json_give_the_same_snapshot(tmp_path: Path) -> None:
    from_yaml = load_snapshot_file(write(tmp_path / "r.yaml", YAML))
    from_json = load_snapshot_file(write(tmp_path / "r.json", JSON))
    assert from_yaml == from_json
    assert from_yaml.version == "v7"
    assert from_yaml.forks[0].routing_key == "alice"


def test_json_with_leading_whitespace_is_json() -> None:
    assert parse_snapshot(b"\n  " + JSON.encode(), "inline").version == "v7"


def test_shipped_example_loads_and_builds() -> None:
    snap = load_snapshot_file(EXAMPLES / "static.yaml")
    table = build_table(snap)
    assert table.version == snap.version
    assert table.services


def test_missing_version_gets_a_content_hash() -> None:
    text = YAML.replace('version: "v7"\n', "")
    first = parse_snapshot(text.encode(), "a.yaml")
    again = parse_snapshot(text.encode(), "b.yaml")
    changed = parse_snapshot(text.replace("10.0.0.1", "10.0.0.2").encode(), "a.yaml")
    assert first.version.startswith("sha256:")
    assert len(first.version) == len("sha256:") + 16
    assert again.version == first.version  # same bytes, same version wherever they come from
    assert changed.version != first.version


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"version: v1\nservices: [\n", "invalid YAML"),
        (b"version: v1\n  services: x\n bad", "invalid YAML"),
        (b'{"version": "v1",}', "r.conf: Expecting property name"),
        (b"\xff\xfe not utf-8", "not UTF-8"),
        (b"- a\n- b\n", "expected a mapping at the top level"),
        (b"", "expected a mapping at the top level"),
        (b"just a string", "expected a mapping at the top level"),
    ],
    ids=[
        "yaml unclosed",
        "yaml indentation",
        "json trailing comma",
        "binary",
        "list",
        "empty",
        "scalar",
    ],
)
def test_syntax_errors_become_config_errors_naming_the_file(data: bytes, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_snapshot(data, "r.conf")
    message = str(info.value)
    assert message.startswith("r.conf: ")
    assert expected in message


def test_yaml_syntax_error_says_where(tmp_path: Path) -> None:
    path = write(
        tmp_path / "routing.yaml", "version: v1\nservices:\n  - name: a\n   endpoints: [x]\n"
    )
    with pytest.raises(ConfigError) as info:
        load_snapshot_file(path)
    assert str(path) in str(info.value)
    assert "line 4" in str(info.value)


@pytest.mark.parametrize(
    ("text", "field", "reason"),
    [
        (
            "version: v1\nservices: [{name: a, endpoints: ['10.0.0.1']}]\n",
            "services.0.endpoints",
            "expected host:port",
        ),
        (
            "version: v1\nservices: [{name: a, endpoints: ['h:1']}]\n"
            "forks: [{routing_key: k, service: b, endpoints: ['h:2']}]\n",
            "(top level)",
            "forks[0]: unknown service 'b'",
        ),
        ("version: v1\nservics: []\n", "servics", "Extra inputs are not permitted"),
        ("version: ''\n", "version", "at least 1 character"),
        (
            "version: v1\nservices: [{name: a, endpoints: ['h:1'], timeouts: {connect: -1}}]\n",
            "services.0.timeouts.connect",
            "greater than 0",
        ),
    ],
)
def test_schema_errors_name_the_file_and_the_field(
    tmp_path: Path, text: str, field: str, reason: str
) -> None:
    path = write(tmp_path / "routing.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_snapshot_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {field}: ")
    assert reason in message
    assert "\n" not in message


def test_every_schema_error_is_reported_at_once(tmp_path: Path) -> None:
    text = "version: v1\nservices: [{name: A, endpoints: [nowhere]}]\nmirrors: 3\n"
    with pytest.raises(ConfigError) as info:
        load_snapshot_file(write(tmp_path / "r.yaml", text))
    message = str(info.value)
    for field in ("services.0.name", "services.0.endpoints", "mirrors"):
        assert field in message


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read \(No such file"):
        load_snapshot_file(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_snapshot_file(tmp_path)  # a directory


# --- FileWatcher -------------------------------------------------------------------------


class Changes:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def _bump_mtime(path: Path) -> None:
    """Move mtime one second ahead: filesystems with coarse timestamps still see a change."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_watcher_is_quiet_while_nothing_changes(tmp_path: Path) -> None:
    path = write(tmp_path / "r.yaml", YAML)
    changes = Changes()
    watcher = FileWatcher(path, changes)
    for _ in range(3):
        watcher.poll()
    assert changes.count == 0


def test_watcher_notices_an_in_place_rewrite_once(tmp_path: Path) -> None:
    path = write(tmp_path / "r.yaml", YAML)
    changes = Changes()
    watcher = FileWatcher(path, changes)
    inode = os.stat(path).st_ino
    with open(path, "w") as f:  # same inode, same size, new content
        f.write(YAML.replace("v7", "v8"))
    _bump_mtime(path)
    assert os.stat(path).st_ino == inode
    watcher.poll()
    watcher.poll()
    assert changes.count == 1
    assert load_snapshot_file(path).version == "v8"


def test_watcher_notices_a_size_change_even_with_the_same_mtime(tmp_path: Path) -> None:
    path = write(tmp_path / "r.yaml", YAML)
    before = os.stat(path)
    changes = Changes()
    watcher = FileWatcher(path, changes)
    with open(path, "a") as f:
        f.write("# appended\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    watcher.poll()
    assert changes.count == 1


def test_watcher_notices_an_atomic_rename(tmp_path: Path) -> None:
    path = write(tmp_path / "r.yaml", YAML)
    before = os.stat(path)
    changes = Changes()
    watcher = FileWatcher(path, changes)
    tmp = write(tmp_path / ".r.yaml.tmp", YAML.replace("v7", "v9"))
    # Even with the old mtime and size, the new inode gives the swap away.
    os.utime(tmp, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(tmp, path)
    watcher.poll()
    watcher.poll()
    assert changes.count == 1
    assert load_snapshot_file(path).version == "v9"


def test_watcher_notices_a_configmap_style_symlink_swap(tmp_path: Path) -> None:
    v1 = write(tmp_path / "v1.yaml", YAML)
    v2 = write(tmp_path / "v2.yaml", YAML.replace("v7", "v2"))
    link = tmp_path / "routing.yaml"
    link.symlink_to(v1)
    changes = Changes()
    watcher = FileWatcher(link, changes)
    tmp_link = tmp_path / "routing.yaml.new"
    tmp_link.symlink_to(v2)
    os.replace(tmp_link, link)
    watcher.poll()
    assert changes.count == 1
    assert load_snapshot_file(link).version == "v2"


def test_watcher_waits_out_a_missing_file_and_sees_it_return(tmp_path: Path) -> None:
    path = write(tmp_path / "r.yaml", YAML)
    changes = Changes()
    watcher = FileWatcher(path, changes)
    path.unlink()
    watcher.poll()
    assert changes.count == 0  # a vanished file is not a new config
    write(path, YAML.replace("v7", "v10"))
    _bump_mtime(path)
    watcher.poll()
    assert changes.count == 1


def test_watcher_started_before_the_file_exists(tmp_path: Path) -> None:
    path = tmp_path / "later.yaml"
    changes = Changes()
    watcher = FileWatcher(path, changes)
    watcher.poll()
    assert changes.count == 0
    write(path, YAML)
    watcher.poll()
    assert changes.count == 1
