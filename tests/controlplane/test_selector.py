"""Label selectors with Kubernetes' grammar: every operator, and clear errors."""

from __future__ import annotations

import pytest

from forklane.controlplane.selector import parse_selector

LABELS = {"team": "pay", "env": "dev"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", True),
        ("team=pay", True),
        ("team==pay", True),
        ("team!=pay", False),
        ("owner!=bob", True),  # no label: != matches
        ("env in (dev,test)", True),
        ("env in (prod)", False),
        ("env notin (prod, stage)", True),
        ("owner notin (bob)", True),
        ("team", True),
        ("!team", False),
        ("!owner", True),
        ("team=pay,env in (dev),!legacy", True),
        ("team=pay,env=prod", False),
    ],
)
def test_operators(text: str, expected: bool) -> None:
    assert parse_selector(text).matches(LABELS) is expected


def test_round_trip_and_equalities() -> None:
    sel = parse_selector("team=pay, env in (dev,test),!legacy")
    assert str(sel) == "team=pay,env in (dev,test),!legacy"
    assert sel.equalities() == {"team": "pay"}


@pytest.mark.parametrize("text", ["=x", "a in b", "a in ()", "a=b=c", "a b"])
def test_bad_terms_name_themselves(text: str) -> None:
    with pytest.raises(ValueError, match="selector term"):
        parse_selector(text)
