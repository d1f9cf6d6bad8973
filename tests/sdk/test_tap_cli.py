"""`forklane tap` capture options: sizes, refusals, and how captures print for people."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from forklane._cli_tap import format_capture, format_line, parse_size


@pytest.mark.parametrize(("text", "expected"), [
    ("512", 512), ("512B", 512), ("4k", 4096), ("4KiB", 4096), ("16 kb", 16384),
])
def test_sizes(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "4MiB", "-1", "1.5k", "k"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="expected bytes"):
        parse_size(text)


@pytest.mark.parametrize("size", ["17KiB", "0", "lots"])
def test_the_cli_refuses_bad_capture_sizes_before_connecting(size: str) -> None:
    env = {**os.environ, "FORKLANE_URL": "http://127.0.0.1:9", "FORKLANE_TOKEN": "x",
           "FORKLANE_CONFIG": os.devnull}
    done = subprocess.run(
        [sys.executable, "-m", "forklane", "tap", "--sandbox", "dev", "--capture-body", size],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "--capture-body" in done.stderr and "Traceback" not in done.stderr


def test_captures_print_under_their_line() -> None:
    doc = {"type": "request", "time": 0, "method": "POST", "target": "/p", "status": 200,
           "capture": {
               "request": {"headers": [["host", "web"], ["authorization", "[redacted]"]],
                           "body": "a=1\nb=2", "body_bytes": 9000, "body_truncated": True},
               "response": {"headers": [[":status", "200"]], "body": "AAE=",
                            "body_encoding": "base64", "body_bytes": 2,
                            "body_truncated": False}}}
    assert format_line(doc) is not None
    assert format_capture(doc) == [
        "    > host: web", "    > authorization: [redacted]",
        "    > body: 9000 bytes, first 7 shown", "    >   a=1", "    >   b=2",
        "    < :status: 200", "    < body: 2 bytes (base64)", "    <   AAE=",
    ]
    assert format_capture({"type": "request"}) == []
