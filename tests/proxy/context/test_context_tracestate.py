"""tracestate vectors written from the W3C Trace Context rules (section 3.3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forklane.proxy.context.tracestate import (
    make_member,
    member_values,
    parse_tracestate,
    serialize_tracestate,
    with_member,
)


def keys(value: str) -> list[str]:
    return [m.key for m in parse_tracestate(value)]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("congo=t61rcWkgMzE", ["congo=t61rcWkgMzE"]),
        ("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", ["rojo=00f067aa0ba902b7", "congo=t61rcWkgMzE"]),
        (" rojo=1 ,\tcongo=2\t", ["rojo=1", "congo=2"]),  # OWS around members
        ("rojo=1,,congo=2", ["rojo=1", "congo=2"]),  # empty members are allowed
        ("a=b c", ["a=b c"]),  # a space inside a value is printable ASCII
        ("tenant@vendor=x", ["tenant@vendor=x"]),  # multi-tenant key
        ("0abc=x", ["0abc=x"]),  # keys may start with a digit
        ("a_-*/b=x", ["a_-*/b=x"]),
        ("k=" + "v" * 256, ["k=" + "v" * 256]),  # the longest value
        ("a" * 256 + "=x", ["a" * 256 + "=x"]),  # the longest simple key
        ("", []),
    ],
)
def test_members_kept_exactly(value: str, expected: list[str]) -> None:
    assert [m.text for m in parse_tracestate(value)] == expected


@pytest.mark.parametrize(
    "member",
    [
        "Upper=x",  # keys are lowercase
        "_a=x",  # must start with a letter or digit
        "k=" + "v" * 257,  # value too long
        "a" * 257 + "=x",  # key too long
        "k=",  # empty value
        "k=a=b",  # '=' not allowed in value
        "k=tab\there",  # HTAB is not printable ASCII
        "k=caf\u00e9",  # non-ASCII
        "t@Vendor=x",  # system id lowercase
        "t@1vendor=x",  # system id starts with a letter
        "t@" + "v" * 15 + "=x",  # system id too long
        "a" * 242 + "@v=x",  # tenant id too long
        "novalue",
        "=x",
    ],
)
def test_malformed_member_dropped_whole(member: str) -> None:
    assert keys(f"rojo=1,{member},congo=2") == ["rojo", "congo"]


def test_thirty_two_members_kept_thirty_three_discarded() -> None:
    ok = ",".join(f"k{i}=v" for i in range(32))
    assert len(parse_tracestate(ok)) == 32
    assert parse_tracestate(ok + ",k32=v") == ()


def test_new_member_goes_left_and_pushes_right_most_out() -> None:
    full = parse_tracestate(",".join(f"k{i}=v" for i in range(32)))
    out = with_member(full, make_member("forklane", "abc"))
    assert len(out) == 32
    assert out[0].text == "forklane=abc"
    assert out[1].key == "k0" and out[-1].key == "k30"


def test_updated_member_moves_left() -> None:
    out = with_member(parse_tracestate("a=1,forklane=old,b=2"), make_member("forklane", "new"))
    assert serialize_tracestate(out) == "forklane=new,a=1,b=2"


def test_serialized_keys_are_unique() -> None:
    assert serialize_tracestate(parse_tracestate("a=1,b=2,a=3")) == "a=1,b=2"


@pytest.mark.parametrize(("key", "value"), [("Bad", "x"), ("ok", "a,b"), ("ok", "x "), ("ok", "")])
def test_make_member_rejects_bad_input(key: str, value: str) -> None:
    with pytest.raises(ValueError):
        make_member(key, value)


@given(st.text())
def test_parse_never_raises_and_round_trips(value: str) -> None:
    members = parse_tracestate(value)
    text = serialize_tracestate(members)
    assert not any(c in text for c in "\r\n\x00")
    assert len(members) <= 32
    again = parse_tracestate(text)
    assert serialize_tracestate(again) == text


@given(st.text(alphabet=st.sampled_from(list("ab=, \t@k1")), max_size=120))
def test_member_values_agrees_with_the_full_parser(header: str) -> None:
    names = frozenset({"a", "k", "a@b"})
    expected = [(m.key, m.value) for m in parse_tracestate(header) if m.key in names]
    assert member_values(header, names) == expected
