"""HPACK (RFC 7541): header block decoding and encoding, with Huffman coding, for the relay.

Why our own: the relay decodes every request and response head and encodes it again for the
other connection; the general-purpose library spent most of a proxied call's CPU on logging
calls, per-field objects and bit-by-bit Huffman decoding. Here a header list is a list of
`(name, value)` byte pairs, Huffman decoding walks a 4-bit state table (two lookups per
byte), and the encoder remembers what its dynamic table holds, so a head repeated on a
connection costs one dict lookup per field.

Invariants:
- the decoder's dynamic table never exceeds the size we announced (SETTINGS_HEADER_TABLE_SIZE,
  4096 here), and a size update above it is a COMPRESSION_ERROR;
- a decoded header list larger than `max_list_size` never lives in memory: decoding goes on
  (the table must stay in step with the peer's) but fields are no longer kept, and
  `oversized` says so;
- the encoder never indexes a field larger than a quarter of its table or a sensitive one
  (authorization, cookies): those go out as never-indexed literals;
- any malformed input is an `HPACKError`, never an IndexError or a hang (an invalid
  Huffman string is never cached);
- with `check` on, every field of a block is covered by `checks.field_problem`: literals
  when they arrive, dynamic entries when they were added (and again while one that failed
  is in the table); `problem` names the first failure.

The compiled build types the two contexts and the decoding loop through `hpack.pxd`.

Pure: no sockets, no clocks.
"""

from __future__ import annotations

from forklane.proxy.http2.checks import field_problem
from forklane.proxy.http2.huffman import CODES, DECODE_TABLE, LENGTHS

__all__ = [
    "STATIC_TABLE",
    "Decoder",
    "Encoder",
    "HPACKError",
    "huffman_decode",
    "huffman_encode",
]


class HPACKError(Exception):
    """A header block that cannot be decoded: a COMPRESSION_ERROR of the connection."""


STATIC_TABLE: tuple[tuple[bytes, bytes], ...] = (
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
)
_STATIC_LEN = len(STATIC_TABLE)  # 61
_STATIC_FULL: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAME: dict[bytes, int] = {}
for _i, _entry in enumerate(STATIC_TABLE, 1):
    _STATIC_FULL.setdefault(_entry, _i)
    _STATIC_NAME.setdefault(_entry[0], _i)
# An indexed field's representation for indexes below 127 (one byte: 1xxxxxxx), so the
# encoder's commonest output costs a tuple look-up instead of building an integer.
_INDEXED: tuple[bytes, ...] = tuple(bytes((0x80 | i,)) for i in range(0x7F))
# The encoder's starting maps: static entries under their index negated, so one look-up per
# field finds a static or a dynamic entry (dynamic ones hold insertion numbers, >= 0).
_STATIC_FIELDS: dict[tuple[bytes, bytes], int] = {f: -i for f, i in _STATIC_FULL.items()}
_STATIC_NAMES: dict[bytes, int] = {n: -i for n, i in _STATIC_NAME.items()}
_SENSITIVE = frozenset({b"authorization", b"proxy-authorization", b"cookie", b"set-cookie"})
_MAX_INT = 1 << 28  # no honest integer in a header block is larger
# Huffman-coded strings decoded before, process-wide: servers that never index their
# response fields (nginx sends `server`, `date`, `content-type`, `grpc-status` as literals
# every time) cost a dict lookup instead of a decode. Bounded: short strings only, and the
# whole cache goes when it is full (junk sent to fill it buys an attacker nothing).
_CACHED_LENGTH = 64
_CACHE_ENTRIES = 4096
_DECODED: dict[bytes, bytes] = {}
# Short literal fields that passed `field_problem`, process-wide and bounded the same way:
# clients send some fields as literals every time (nghttp2 never indexes `:path` or
# `content-length`), and checking one costs more than this look-up.
_CLEAN: set[tuple[bytes, bytes]] = set()
_EOS = 256


def huffman_decode(data: bytes) -> bytes:
    """Huffman-decoded `data` (RFC 7541 §5.2, Appendix B): padding must be at most 7 one-bits,
    and the EOS symbol must not appear."""
    table = DECODE_TABLE
    state = 0
    accept = True
    out = bytearray()
    for byte in data:
        nxt, flags, sym = table[state * 16 + (byte >> 4)]
        if flags & 2:
            raise HPACKError("invalid Huffman code")
        if flags & 1:
            out.append(sym)
        nxt2, flags2, sym2 = table[nxt * 16 + (byte & 0x0F)]
        if flags2 & 2:
            raise HPACKError("invalid Huffman code")
        if flags2 & 1:
            out.append(sym2)
        state = nxt2
        accept = bool(flags2 & 4)
    if not accept:
        raise HPACKError("invalid Huffman padding")
    return bytes(out)


_BITS = tuple(format(code, f"0{length}b") for code, length in zip(CODES, LENGTHS, strict=True))


def huffman_encode(data: bytes) -> bytes:
    """`data` Huffman-coded, padded with the most significant bits of EOS (ones)."""
    bits = "".join([_BITS[b] for b in data])
    pad = -len(bits) % 8
    if pad:
        bits += "1" * pad
    if not bits:
        return b""
    return int(bits, 2).to_bytes(len(bits) // 8, "big")


def huffman_length(data: bytes) -> int:
    """How many bytes `huffman_encode(data)` returns."""
    lengths = LENGTHS
    total = 0
    for b in data:
        total += lengths[b]
    return (total + 7) >> 3


def _integer(value: int, prefix: int, first: int) -> bytes:
    """`value` as an HPACK integer with an N-bit prefix; `first` holds the other bits of the
    first byte."""
    limit = (1 << prefix) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(value: bytes) -> bytes:
    """A string literal, Huffman-coded when that is shorter."""
    size = len(value)
    if size > 3:
        hsize = huffman_length(value)
        if hsize < size:
            return _integer(hsize, 7, 0x80) + huffman_encode(value)
    return _integer(size, 7, 0) + value


def _check(field: tuple[bytes, bytes]) -> str | None:
    """`checks.field_problem` of a literal field, remembered when it is short and clean."""
    clean = _CLEAN
    if field in clean:
        return None
    why = field_problem(field[0], field[1])
    if why is None and len(field[1]) <= _CACHED_LENGTH:
        if len(clean) >= _CACHE_ENTRIES:
            clean.clear()
        clean.add(field)
    return why


class Decoder:
    """One connection's inbound header compression context.

    `check`: note the first field of each block that `checks.field_problem` refuses in
    `problem` (a request's fields, on a server connection that validates them). Only literals
    are checked: static entries are well-formed, and a dynamic entry was checked when it was
    added (while the table holds one that failed, fields taken from it are checked again)."""

    __slots__ = ("_bad", "_dynamic", "_size", "check", "max_allowed", "max_list_size",
                 "max_size", "oversized", "problem")

    def __init__(self, max_allowed: int = 4096, max_list_size: int = 1 << 20,
                 check: bool = False) -> None:
        self._dynamic: list[tuple[bytes, bytes]] = []  # newest last
        self._size = 0
        self._bad = 0  # entries in the dynamic table that failed the check
        self.max_allowed = max_allowed  # what we announced: the peer may not exceed it
        self.max_size = max_allowed  # what the peer chose (dynamic table size update)
        self.max_list_size = max_list_size
        self.oversized = False
        self.check = check
        self.problem: str | None = None

    def _get(self, index: int) -> tuple[bytes, bytes]:
        if index <= 0:
            raise HPACKError("index 0 is not a header field")
        if index <= _STATIC_LEN:
            return STATIC_TABLE[index - 1]
        dynamic = self._dynamic
        pos = len(dynamic) - (index - _STATIC_LEN)
        if pos < 0:
            raise HPACKError(f"index {index} is beyond the header table")
        return dynamic[pos]

    def _add(self, field: tuple[bytes, bytes], bad: bool) -> None:
        name, value = field
        size = len(name) + len(value) + 32
        dynamic = self._dynamic
        if size > self.max_size:
            dynamic.clear()
            self._size = 0
            self._bad = 0
            return
        self._size += size
        dynamic.append(field)
        if bad:
            self._bad += 1
        self._evict()

    def _evict(self) -> None:
        dynamic = self._dynamic
        cut = 0
        while self._size > self.max_size:
            name, value = dynamic[cut]
            self._size -= len(name) + len(value) + 32
            if self._bad and field_problem(name, value) is not None:
                self._bad -= 1
            cut += 1
        if cut:
            del dynamic[:cut]

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """The header list of one complete header block, in order."""
        headers: list[tuple[bytes, bytes]] = []
        self.oversized = False
        self.problem = None
        check = self.check
        listed = 0
        limit = self.max_list_size
        pos = 0
        end = len(block)
        first = True
        while pos < end:
            byte = block[pos]
            if byte & 0x80:  # indexed field
                index = byte & 0x7F
                if index == 0x7F:
                    index, pos = _read_int(block, pos, 7)
                else:
                    pos += 1  # the common case: the whole index in this byte
                if 0 < index <= _STATIC_LEN:
                    field = STATIC_TABLE[index - 1]
                else:
                    field = self._get(index)
                    if self._bad and check and self.problem is None:
                        self.problem = field_problem(field[0], field[1])
                name, value = field
            elif byte & 0x40:  # literal, incremental indexing
                index = byte & 0x3F
                if index == 0x3F:
                    index, pos = _read_int(block, pos, 6)
                else:
                    pos += 1
                if index:
                    name = self._get(index)[0]
                else:
                    name, pos = _read_string(block, pos)
                value, pos = _read_string(block, pos)
                field = (name, value)
                bad = False
                if check:
                    why = _check(field)
                    if why is not None:
                        bad = True
                        if self.problem is None:
                            self.problem = why
                self._add(field, bad)
            elif byte & 0x20:  # dynamic table size update
                if not first and headers:
                    raise HPACKError("a table size update after a header field")
                size, pos = _read_int(block, pos, 5)
                if size > self.max_allowed:
                    raise HPACKError(f"table size {size} above the {self.max_allowed} allowed")
                self.max_size = size
                self._evict()
                continue
            else:  # literal without indexing (0000) or never indexed (0001)
                index = byte & 0x0F
                if index == 0x0F:
                    index, pos = _read_int(block, pos, 4)
                else:
                    pos += 1
                if index:
                    name = self._get(index)[0]
                else:
                    name, pos = _read_string(block, pos)
                value, pos = _read_string(block, pos)
                field = (name, value)
                if check and self.problem is None:
                    self.problem = _check(field)
            first = False
            listed += len(name) + len(value) + 32
            if listed > limit:
                self.oversized = True
                continue
            headers.append(field)
        return headers


def _read_int(block: bytes, pos: int, prefix: int) -> tuple[int, int]:
    mask = (1 << prefix) - 1
    value = block[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    end = len(block)
    while True:
        if pos >= end:
            raise HPACKError("a header block ends inside an integer")
        byte = block[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if value > _MAX_INT:
            raise HPACKError("an integer too large for a header block")
        if not byte & 0x80:
            return value, pos
        shift += 7


def _read_string(block: bytes, pos: int) -> tuple[bytes, int]:
    if pos >= len(block):
        raise HPACKError("a header block ends before a string")
    first = block[pos]
    huffman = first & 0x80
    length = first & 0x7F
    if length == 0x7F:
        length, pos = _read_int(block, pos, 7)
    else:
        pos += 1  # the common case: the whole length in this byte
    stop = pos + length
    if stop > len(block):
        raise HPACKError("a string runs past the end of its header block")
    raw = block[pos:stop]
    if not huffman:
        return raw, stop
    if length > _CACHED_LENGTH:
        return huffman_decode(raw), stop
    decoded = _DECODED
    value = decoded.get(raw)
    if value is None:
        value = huffman_decode(raw)
        if len(decoded) >= _CACHE_ENTRIES:
            decoded.clear()
        decoded[raw] = value
    return value, stop


class Encoder:
    """One connection's outbound header compression context.

    The dynamic table is mirrored as two dicts keyed by field and by name, holding each
    entry's insertion number; an entry's HPACK index is computed from it, so insertions and
    evictions never renumber anything. The same dicts hold the static table (negated
    indexes, which a static match prefers), so a field costs one look-up."""

    __slots__ = ("_entries", "_full", "_inserted", "_names", "_pending_size", "_size",
                 "max_size")

    def __init__(self, max_size: int = 4096) -> None:
        self.max_size = max_size
        self._entries: list[tuple[bytes, bytes]] = []  # oldest first
        self._inserted = 0  # insertion number of the next entry
        self._size = 0
        self._full: dict[tuple[bytes, bytes], int] = dict(_STATIC_FIELDS)
        self._names: dict[bytes, int] = dict(_STATIC_NAMES)
        self._pending_size = -1  # a table size update to announce, -1: none

    def resize(self, size: int) -> None:
        """The peer's SETTINGS_HEADER_TABLE_SIZE changed: use at most that (and say so)."""
        size = min(size, 4096)
        if size != self.max_size:
            self.max_size = size
            self._pending_size = size
            self._evict()

    def _evict(self) -> None:
        entries = self._entries
        cut = 0
        first = self._inserted - len(entries)
        while self._size > self.max_size:
            name, value = entries[cut]
            self._size -= len(name) + len(value) + 32
            number = first + cut
            if self._full.get((name, value)) == number:
                del self._full[(name, value)]
            if self._names.get(name) == number:
                del self._names[name]
            cut += 1
        if cut:
            del entries[:cut]

    def encode(self, headers: list[tuple[bytes, bytes]]) -> bytes:
        """One header block for `headers` (names lowercase, as HTTP/2 requires)."""
        out: list[bytes] = []
        if self._pending_size >= 0:
            out.append(_integer(self._pending_size, 5, 0x20))
            self._pending_size = -1
        full = self._full
        names = self._names
        indexed = _INDEXED
        for field in headers:
            number = full.get(field)
            if number is not None:
                if number < 0:
                    out.append(indexed[-number])  # static indexes are all below 127
                    continue
                at = self._inserted - number + _STATIC_LEN
                out.append(indexed[at] if at < 0x7F else _integer(at, 7, 0x80))
                continue
            name, value = field
            named = names.get(name)
            index = None
            if named is not None:
                index = -named if named < 0 else self._inserted - named + _STATIC_LEN
            size = len(name) + len(value) + 32
            if name in _SENSITIVE or size * 4 > self.max_size:
                # Never indexed (0001): large or secret values stay out of both tables.
                out.append(_integer(index, 4, 0x10) if index else b"\x10" + _string(name))
                out.append(_string(value))
                continue
            out.append(_integer(index, 6, 0x40) if index else b"\x40" + _string(name))
            out.append(_string(value))
            self._entries.append(field)
            full[field] = self._inserted
            if named is None or named >= 0:  # a static name keeps its static index
                names[name] = self._inserted
            self._inserted += 1
            self._size += size
            if self._size > self.max_size:
                self._evict()
        return b"".join(out)
