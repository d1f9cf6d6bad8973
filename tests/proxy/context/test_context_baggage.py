"""W3C Baggage vectors written from the specification's rules (section 3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forklane.proxy.context.baggage import (
    MAX_BYTES,
    decode_value,
    encode_value,
    make_member,
    member_values,
    parse_baggage,
    serialize_baggage,
)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("key1=value1", [("key1", "value1", "key1=value1")]),
        (
            "key1=value1,key2=value2",
            [("key1", "value1", "key1=value1"), ("key2", "value2", "key2=value2")],
        ),
        # OWS around members, around '=' and around ';'
        (
            " key1 = value1 ; p1 ; p2 = v2 ,\tkey2=value2\t",
            [("key1", "value1", "key1 = value1 ; p1 ; p2 = v2"), ("key2", "value2", "key2=value2")],
        ),
        ("k=", [("k", "", "k=")]),  # an empty value is allowed
        ("k=a=b", [("k", "a=b", "k=a=b")]),  # '=' is a baggage-octet
        ("k=%20x%2C", [("k", "%20x%2C", "k=%20x%2C")]),
        ("k1=v1,,k2=v2", [("k1", "v1", "k1=v1"), ("k2", "v2", "k2=v2")]),  # empty element skipped
        ("K!#$&'*+.^_`|~=v", [("K!#$&'*+.^_`|~", "v", "K!#$&'*+.^_`|~=v")]),  # token chars
    ],
)
def test_members_parse_exactly(header: str, expected: list[tuple[str, str, str]]) -> None:
    assert [(m.key, m.value, m.text) for m in parse_baggage(header)] == expected


@pytest.mark.parametrize(
    "member",
    [
        "novalue",  # no '='
        "=v",  # no key
        "k ey=v",  # space in key
        "k=va lue",  # space in value
        'k="v"',  # DQUOTE
        "k=a\\b",  # backslash
        "k(=v",  # '(' is not a token char
        "k=v;",  # property with no key
        "k=v;=x",
        "k=caf\u00e9",  # non-ASCII must be percent-encoded
        "k=v\x00",
        "k=v\r\nx: y",
    ],
)
def test_malformed_member_dropped_whole_neighbours_kept(member: str) -> None:
    members = parse_baggage(f"a=1,{member},b=2")
    assert [m.text for m in members] == ["a=1", "b=2"]


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        ("plain", "plain"),
        ("a+b", "a+b"),  # '+' is a literal plus, not a space
        ("a%20b", "a b"),
        ("a%2Bb", "a+b"),
        ("%E2%9C%93", "\u2713"),  # UTF-8
        ("%e2%9c%93", "\u2713"),  # lowercase hex
        ("%FF", "\ufffd"),  # invalid UTF-8 becomes U+FFFD
        ("100%", None),  # a stray '%' is not a valid escape
        ("%2", None),
        ("%zz", None),
    ],
)
def test_decode_value(raw: str, decoded: str | None) -> None:
    assert decode_value(raw) == decoded


@pytest.mark.parametrize("value", ["plain", "a b", "100%", 'a,b;c="d"\\', "\u2713 ok", "+"])
def test_encode_then_decode_is_identity(value: str) -> None:
    encoded = encode_value(value)
    assert parse_baggage(f"k={encoded}")[0].value == encoded
    assert decode_value(encoded) == value


def test_sixty_four_members_propagate_sixty_fifth_dropped_whole() -> None:
    members = parse_baggage(",".join(f"k{i}=v" for i in range(65)))
    out = serialize_baggage(members)
    assert out.split(",")[-1] == "k63=v"
    assert len(out.split(",")) == 64


def test_byte_limit_drops_whole_members() -> None:
    big = "x" * 4000
    members = parse_baggage(f"a={big},b={big},c={big}")
    out = serialize_baggage(members)
    assert out == f"a={big},b={big}"
    assert len(out) <= MAX_BYTES


def test_exactly_8192_bytes_is_kept() -> None:
    first = "a=" + "x" * 4094  # 4096 bytes
    second = "b=" + "y" * 4093  # 4095 bytes, plus one comma
    out = serialize_baggage(parse_baggage(f"{first},{second}"))
    assert len(out) == MAX_BYTES
    assert out == f"{first},{second}"


def test_make_member_encodes_and_rejects_bad_keys() -> None:
    assert make_member("k", "a b").text == "k=a%20b"
    with pytest.raises(ValueError):
        make_member("bad key", "v")


@given(st.text())
def test_parse_never_raises_output_header_safe_and_stable(header: str) -> None:
    members = parse_baggage(header)
    text = serialize_baggage(members)
    assert not any(c in text for c in "\r\n\x00")
    assert len(text) <= MAX_BYTES
    assert serialize_baggage(parse_baggage(text)) == text
    for member in members:
        decode_value(member.value)


@given(st.text())
def test_any_value_encodes_to_a_valid_member(value: str) -> None:
    encoded = encode_value(value)
    (member,) = parse_baggage(f"k={encoded}")
    assert member.value == encoded
    expected = value.encode("utf-8", errors="surrogatepass").decode("utf-8", errors="replace")
    assert decode_value(encoded) == expected


@given(st.text(alphabet=st.sampled_from(list("ab=;, \t%2Fk\r")), max_size=60))
def test_member_values_agrees_with_the_full_parser(header: str) -> None:
    names = frozenset({"a", "k"})
    expected = [(m.key, m.value) for m in parse_baggage(header) if m.key in names]
    assert member_values(header, names) == expected
