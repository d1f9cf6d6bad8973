"""The last ACKed snapshot on disk: written atomically, read back, and never a crash."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from forklane.proxy.persist import SNAPSHOT_FILE, load_snapshot, save_snapshot
from forklane.proxy.schema import Fork, RoutingSnapshot, Service
from forklane.proxy.state import TableHolder
from forklane.proxy.subscriber import Subscriber


def snapshot(version: int) -> RoutingSnapshot:
    return RoutingSnapshot(
        version=str(version),
        services=(
            Service(name="catalog", authorities=("catalog.shop",), endpoints=("127.0.0.1:9001",)),
        ),
        forks=(
            Fork(
                routing_key="abc",
                service="catalog",
                endpoints=("127.0.0.1:9101",),
                fallback="baseline",
                sandbox="sb-1",
            ),
        ),
    )


def test_round_trip_replaces_whole_file_and_leaves_no_temporaries(tmp_path: Path) -> None:
    state = tmp_path / "state"  # created on first save
    save_snapshot(state, snapshot(1))
    path = save_snapshot(state, snapshot(2))
    assert path == state / SNAPSHOT_FILE
    assert load_snapshot(state) == snapshot(2)
    assert [p.name for p in state.iterdir()] == [SNAPSHOT_FILE]
    # The file is a plain snapshot, usable as a static config file too.
    assert json.loads(path.read_text())["version"] == "2"


def test_missing_file_is_none_without_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert load_snapshot(tmp_path) is None
    assert load_snapshot(tmp_path / "absent") is None
    assert caplog.records == []


@pytest.mark.parametrize(
    ("content", "mentions"),
    [
        (b'{"version": "3", "services": [', "corrupt"),  # torn write from an old release
        (b"\x00\xff garbage", "corrupt"),
        (
            b'{"version": "3", "forks": [{"routing_key": "k", "service": "nope",'
            b' "endpoints": ["127.0.0.1:1"]}]}',
            "unknown service",
        ),
    ],
)
def test_corrupt_or_invalid_file_is_none_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes, mentions: str
) -> None:
    (tmp_path / SNAPSHOT_FILE).write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="forklane.proxy.persist"):
        assert load_snapshot(tmp_path) is None
    [record] = caplog.records
    assert record.levelno == logging.WARNING and mentions in record.getMessage()


def test_unreadable_file_is_none_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / SNAPSHOT_FILE).mkdir()  # a directory where the file should be
    with caplog.at_level(logging.WARNING, logger="forklane.proxy.persist"):
        assert load_snapshot(tmp_path) is None
    assert "unreadable" in caplog.records[0].getMessage()


def test_cold_start_serves_persisted_snapshot_and_survives_a_corrupt_one(
    tmp_path: Path,
) -> None:
    good, bad = tmp_path / "good", tmp_path / "bad"
    save_snapshot(good, snapshot(7))
    bad.mkdir()
    (bad / SNAPSHOT_FILE).write_text("{")

    holder = TableHolder()
    sub = Subscriber("127.0.0.1:1", holder, "p1", "catalog", state_dir=good)
    assert sub.restore() is True
    assert holder.table is not None and holder.table.version == "7"
    assert "abc" in holder.table.services["catalog"].forks
    assert sub.version == "7"  # reported to the control plane on subscribe

    empty = TableHolder()
    assert Subscriber("127.0.0.1:1", empty, "p2", None, state_dir=bad).restore() is False
    assert empty.table is None
