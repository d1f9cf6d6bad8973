"""Bounded JSON decoding: depth is measured exactly, strings never count, nothing crashes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forklane.proxy.jsonlimits import JsonTooDeep, check_nesting, loads_bounded
from forklane.proxy.loader import parse_snapshot
from forklane.proxy.table import ConfigError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab,:'),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                 max_size=3),
    max_leaves=40,
)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


@given(json_values, st.integers(min_value=0, max_value=8))
def test_the_measured_depth_is_the_real_depth(value: Any, limit: int) -> None:
    raw = json.dumps(value).encode()
    if depth(value) > limit:
        with pytest.raises(JsonTooDeep):
            check_nesting(raw, limit)
    else:
        check_nesting(raw, limit)
        assert loads_bounded(raw, limit) == value


def test_a_hundred_thousand_levels_is_refused_not_a_crash() -> None:
    with pytest.raises(JsonTooDeep):
        loads_bounded(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(ValueError):
        loads_bounded("{" * 50_000)


def test_brackets_and_escaped_quotes_inside_strings_are_text() -> None:
    raw = json.dumps({"a": '\\"[[[[[[' * 100, "b": ["]]]]"]}).encode()
    assert loads_bounded(raw, 2)["b"] == ["]]]]"]


@pytest.mark.parametrize("text", ["{" + '"a": [' * 5000 + "1" + "]" * 5000 + "}",
                                  "services:\n" + "  - " * 1 + "[" * 5000 + "]" * 5000])
def test_a_deeply_nested_routing_file_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="nested"):
        parse_snapshot(text.encode(), "routing.yaml")
