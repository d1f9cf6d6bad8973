"""JSON from untrusted peers, bounded before it is decoded.

`json.loads` recurses once per nesting level, so a body of 100,000 nested arrays raises
`RecursionError` (a crash, not a parse error). `check_nesting` measures the depth first, in C
loops (regex, translate, accumulate) rather than per byte in Python: strings are blanked out,
every byte but brackets is deleted, and a running sum of +1/-1 gives the depth.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

__all__ = ["MAX_DEPTH", "JsonTooDeep", "check_nesting", "loads_bounded"]

MAX_DEPTH = 64  # far deeper than any forklane document, far shallower than the C stack

_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DELTA = [0] * 256
for _open in b"[{":
    _DELTA[_open] = 1
for _close in b"]}":
    _DELTA[_close] = -1


class JsonTooDeep(ValueError):
    """The document nests deeper than the limit (a ValueError, like any other bad JSON)."""


def check_nesting(raw: bytes, limit: int = MAX_DEPTH) -> None:
    """Raise `JsonTooDeep` when `raw` nests arrays/objects deeper than `limit`."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return  # cannot be deeper than it has openers: the common case, at once
    brackets = _STRINGS.sub(b'""', raw).translate(None, _NOT_BRACKETS)
    if brackets and max(accumulate(map(_DELTA.__getitem__, brackets))) > limit:
        raise JsonTooDeep(f"nested deeper than {limit} levels")


def loads_bounded(raw: bytes | str, limit: int = MAX_DEPTH) -> Any:
    """`json.loads` that refuses documents nested deeper than `limit` with a ValueError."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    check_nesting(data, limit)
    try:
        return json.loads(raw)
    except RecursionError:  # belt and braces: never a crash
        raise JsonTooDeep("nested too deeply to decode") from None
