"""traceparent vectors written from the W3C Trace Context rules (section 3.2)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forklane.proxy.context.traceparent import parse_traceparent

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
VALID = f"00-{TRACE}-{PARENT}-01"


@pytest.mark.parametrize(
    ("value", "trace_id", "sampled"),
    [
        (VALID, TRACE, True),
        (f"00-{TRACE}-{PARENT}-00", TRACE, False),
        (f"  {VALID}\t", TRACE, True),  # OWS around a field value is not part of it
        (f"01-{TRACE}-{PARENT}-01", TRACE, True),  # a future version parses
        (f"cc-{TRACE}-{PARENT}-09-what-the-future-holds", TRACE, True),
        (f"00-{TRACE}-{PARENT}-ff", TRACE, True),  # unknown flag bits are kept
    ],
)
def test_valid_traceparent(value: str, trace_id: str, sampled: bool) -> None:
    parsed = parse_traceparent(value)
    assert parsed is not None
    assert parsed.trace_id == trace_id
    assert parsed.parent_id == PARENT
    assert parsed.sampled is sampled


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        f"ff-{TRACE}-{PARENT}-01",  # version ff is forbidden
        f"00-{'0' * 32}-{PARENT}-01",  # all-zero trace-id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent-id
        f"00-{TRACE.upper()}-{PARENT}-01",  # uppercase hex
        f"00-{TRACE}-{PARENT.upper()}-01",
        f"0-{TRACE}-{PARENT}-01",  # short version
        f"00-{TRACE[:-1]}-{PARENT}-01",  # short trace-id
        f"00-{TRACE}-{PARENT[:-1]}-01",  # short parent-id
        f"00-{TRACE}-{PARENT}-1",  # short flags
        f"00-{TRACE}-{PARENT}-01-extra",  # version 00 has exactly four fields
        f"00-{TRACE}-{PARENT}-01-",
        f"01-{TRACE}-{PARENT}-01extra",  # future fields must start with '-'
        f"00_{TRACE}_{PARENT}_01",  # wrong delimiter
        f"00-{TRACE}-{PARENT}-0g",  # not hex
        f"{VALID},{VALID}",  # two traceparent fields, combined
        f"{VALID}, 00-{'1' * 32}-{PARENT}-01",
        f"00-{TRACE}-{PARENT}-01\r\n",  # CR/LF are not OWS
    ],
)
def test_invalid_traceparent(value: str | None) -> None:
    assert parse_traceparent(value) is None


@given(st.text())
def test_traceparent_never_raises_and_text_is_header_safe(value: str) -> None:
    parsed = parse_traceparent(value)
    if parsed is not None:
        assert not any(c in parsed.text for c in "\r\n\x00")
        assert parse_traceparent(parsed.text) == parsed
