"""HPACK against RFC 7541 Appendix C: every example block decodes to its header list and leaves
the dynamic table the RFC shows; the encoder reproduces the Huffman request examples byte for
byte; Huffman coding round-trips and refuses what §5.2 forbids."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forklane.proxy.http2.checks import field_problem
from forklane.proxy.http2.hpack import Decoder, Encoder, HPACKError, huffman_decode, huffman_encode

H = bytes.fromhex

REQUESTS = [
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
     (b":authority", b"www.example.com")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
     (b":authority", b"www.example.com"), (b"cache-control", b"no-cache")],
    [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/index.html"),
     (b":authority", b"www.example.com"), (b"custom-key", b"custom-value")],
]
REQUEST_TABLE_SIZES = [57, 110, 164]
C3 = [
    "828684410f7777772e6578616d706c652e636f6d",
    "828684be58086e6f2d6361636865",
    "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
]
C4 = [
    "828684418cf1e3c2e5f23a6ba0ab90f4ff",
    "828684be5886a8eb10649cbf",
    "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
]
DATE1 = b"Mon, 21 Oct 2013 20:13:21 GMT"
DATE2 = b"Mon, 21 Oct 2013 20:13:22 GMT"
LOCATION = b"https://www.example.com"
RESPONSES = [
    [(b":status", b"302"), (b"cache-control", b"private"), (b"date", DATE1),
     (b"location", LOCATION)],
    [(b":status", b"307"), (b"cache-control", b"private"), (b"date", DATE1),
     (b"location", LOCATION)],
    [(b":status", b"200"), (b"cache-control", b"private"), (b"date", DATE2),
     (b"location", LOCATION), (b"content-encoding", b"gzip"),
     (b"set-cookie", b"foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1")],
]
RESPONSE_TABLE_SIZES = [222, 222, 215]
C5 = [
    "4803333032580770726976617465611d4d6f6e2c203231204f637420323031332032303a31333a323120474d"
    "546e1768747470733a2f2f7777772e6578616d706c652e636f6d",
    "4803333037c1c0bf",
    "88c1611d4d6f6e2c203231204f637420323031332032303a31333a323220474d54c05a04677a69707738"
    "666f6f3d4153444a4b48514b425a584f5157454f50495541585157454f49553b206d61782d6167653d"
    "333630303b2076657273696f6e3d31",
]
C6 = [
    "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863c7"
    "8f0b97c8e9ae82ae43d3",
    "4883640effc1c0bf",
    "88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7b335"
    "dfdfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007",
]


def table_size(decoder: Decoder) -> int:
    return sum(len(n) + len(v) + 32 for n, v in decoder._dynamic)


@pytest.mark.parametrize("blocks", [C3, C4], ids=["C.3 plain", "C.4 Huffman"])
def test_request_examples_decode_in_sequence(blocks: list[str]) -> None:
    decoder = Decoder()
    for block, expected, size in zip(blocks, REQUESTS, REQUEST_TABLE_SIZES, strict=True):
        assert decoder.decode(H(block)) == expected
        assert table_size(decoder) == size


@pytest.mark.parametrize("blocks", [C5, C6], ids=["C.5 plain", "C.6 Huffman"])
def test_response_examples_decode_with_a_256_byte_table(blocks: list[str]) -> None:
    decoder = Decoder(max_allowed=256)
    decoder.max_size = 256
    for block, expected, size in zip(blocks, RESPONSES, RESPONSE_TABLE_SIZES, strict=True):
        assert decoder.decode(H(block)) == expected
        assert table_size(decoder) == size
    # C.5.3's final table, newest first (the RFC's listing).
    assert [n for n, _ in reversed(decoder._dynamic)] == [
        b"set-cookie", b"content-encoding", b"date"]


def test_c2_single_field_representations() -> None:
    decoder = Decoder()
    assert decoder.decode(H("400a637573746f6d2d6b65790d637573746f6d2d686561646572")) == [
        (b"custom-key", b"custom-header")]
    assert table_size(decoder) == 55
    assert decoder.decode(H("040c2f73616d706c652f70617468")) == [(b":path", b"/sample/path")]
    assert decoder.decode(H("100870617373776f726406736563726574")) == [(b"password", b"secret")]
    assert decoder.decode(H("82")) == [(b":method", b"GET")]
    assert table_size(decoder) == 55  # neither literal-without-indexing form was added


def test_encoder_reproduces_the_huffman_request_examples() -> None:
    encoder = Encoder()
    for block, headers in zip(C4, REQUESTS, strict=True):
        assert encoder.encode(headers).hex() == block


def test_encoder_and_decoder_stay_in_step_across_evictions() -> None:
    encoder, decoder = Encoder(256), Decoder(max_allowed=256)
    decoder.max_size = 256
    for i in range(200):
        headers = [(b":status", b"200"), (b"x-n", b"%d" % (i % 7)), (b"x-big", b"v" * (i % 40)),
                   (b"authorization", b"secret"), (b"x-id", b"%d" % i)]
        assert decoder.decode(encoder.encode(headers)) == headers


def test_a_smaller_peer_table_is_announced_then_honoured() -> None:
    encoder, decoder = Encoder(), Decoder()
    encoder.encode([(b"x-a", b"1" * 100)])
    encoder.resize(64)
    block = encoder.encode([(b"x-b", b"2")])
    assert block[0] & 0xE0 == 0x20  # a dynamic table size update comes first
    decoder.decode(encoder.encode([(b"x-c", b"3")]))  # (a fresh decoder: just must parse)
    fresh = Decoder()
    assert fresh.decode(block) == [(b"x-b", b"2")]
    assert fresh.max_size == 64


@pytest.mark.parametrize("block, why", [
    ("80", "index 0"),
    ("be", "index beyond the table"),
    ("3fe21f", "size update above the announced 4096"),
    ("8220", "size update after a field"),
    ("410f7777", "string runs past the end"),
    ("41", "block ends before a string"),
    ("7fffffffffff", "integer too large / truncated"),
    ("4187ffffffffffffff", "Huffman EOS in the string"),
])
def test_malformed_blocks_are_compression_errors(block: str, why: str) -> None:
    with pytest.raises(HPACKError):
        Decoder().decode(H(block))


def test_a_header_list_over_the_limit_is_flagged_and_the_table_stays_in_step() -> None:
    encoder = Encoder()
    decoder = Decoder(max_list_size=1000)
    big = [(b"x-%d" % i, b"v" * 50) for i in range(30)]
    assert decoder.decode(encoder.encode(big)) and decoder.oversized
    small = [(b"x-1", b"v" * 50), (b"x-2", b"v" * 50)]  # indexed by the first block
    assert decoder.decode(encoder.encode(small)) == small and not decoder.oversized


def test_huffman_padding_rules() -> None:
    assert huffman_decode(H("f1e3c2e5f23a6ba0ab90f4ff")) == b"www.example.com"
    with pytest.raises(HPACKError):
        huffman_decode(H("f1e3c2e5f23a6ba0ab90f4ff") + b"\xff")  # 8+ bits of padding
    with pytest.raises(HPACKError):
        huffman_decode(b"\x00")  # padding of zeros: '0' bits that are not a full symbol


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_huffman_round_trips_any_bytes(data: bytes) -> None:
    assert huffman_decode(huffman_encode(data)) == data


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.binary(min_size=1, max_size=40), st.binary(max_size=200)),
                max_size=20), st.integers(0, 4096))
def test_any_header_list_round_trips(headers: list[tuple[bytes, bytes]], size: int) -> None:
    encoder, decoder = Encoder(), Decoder()
    encoder.resize(size)
    for _ in range(3):
        assert decoder.decode(encoder.encode(headers)) == headers


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_the_decoder_never_fails_otherwise_than_with_hpack_error(block: bytes) -> None:
    try:
        Decoder().decode(block)
    except HPACKError:
        pass


def test_cached_huffman_strings_decode_the_same_and_invalid_ones_still_fail() -> None:
    block = bytes.fromhex(C4[0])
    for _ in range(3):  # the second and third decodes come from the cache
        assert Decoder().decode(block) == REQUESTS[0]
    bad = bytes.fromhex("4187ffffffffffffff")  # EOS inside the value
    for _ in range(2):
        with pytest.raises(HPACKError):
            Decoder().decode(bad)


_NAMES = st.sampled_from([b"x-a", b"x-b", b"X-Up", b"content-type", b"cookie", b"", b"x-long"])
_VALUES = st.sampled_from([b"1", b"v", b"a\x00b", b"c\rd", b"e\nf", b"", b"x" * 300,
                           b"application/grpc"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.tuples(_NAMES, _VALUES), max_size=6), min_size=1, max_size=6),
       st.sampled_from([256, 4096]))
def test_the_decoder_check_sees_every_malformed_field_literal_or_indexed(
    heads: list[list[tuple[bytes, bytes]]], table: int
) -> None:
    """With `check` on, a block's `problem` is set exactly when one of its fields fails
    `checks.field_problem`, whether the field came as a literal or as an index into the
    dynamic table (the encoder indexes what it can, so repeated heads refer to the table,
    and the small table evicts entries, bad ones included)."""
    encoder, decoder = Encoder(table), Decoder(max_allowed=table, check=True)
    for head in heads + heads:
        assert decoder.decode(encoder.encode(head)) == head
        expected = any(field_problem(n, v) is not None for n, v in head)
        assert (decoder.problem is not None) == expected, (head, decoder.problem)
