"""The HTTP/2 frame guard: what it hands to the codec per turn, and when a peer floods."""

from __future__ import annotations

import pytest

from forklane.proxy.http2._guard import PREFACE, AbuseMemory, FloodLimits, FrameGuard

DATA, HEADERS, PRIORITY, RST, SETTINGS, PING, WINDOW_UPDATE, CONTINUATION = 0, 1, 2, 3, 4, 6, 8, 9


def frame(ftype: int, payload: bytes = b"", flags: int = 0, sid: int = 0) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") + payload


def settings() -> bytes:
    return frame(SETTINGS, b"\x00\x03\x00\x00\x00\x64")


def ping() -> bytes:
    return frame(PING, b"12345678")


def test_the_preface_passes_unparsed_and_frames_are_counted_after_it() -> None:
    guard = FrameGuard(FloodLimits(frames_per_turn=3), now=0.0)
    data = PREFACE + settings() * 5
    take, violation = guard.scan(data, 0.0)
    assert violation is None
    assert take == len(PREFACE) + 3 * len(settings())  # three frames in this turn
    take2, violation = guard.scan(data[take:], 0.0)
    assert violation is None and take2 == 2 * len(settings())


def test_a_frame_header_split_across_reads_is_joined() -> None:
    guard = FrameGuard(FloodLimits(), now=0.0)
    whole = PREFACE + ping() + ping()
    cut = len(PREFACE) + len(ping()) + 4  # inside the second frame's header
    assert guard.scan(whole[:cut], 0.0) == (cut, None)
    assert guard.scan(whole[cut:], 0.0) == (len(whole) - cut, None)


def test_large_payloads_are_skipped_without_counting_as_frames() -> None:
    guard = FrameGuard(FloodLimits(frames_per_turn=2), now=0.0)
    data = PREFACE + frame(DATA, b"x" * 16000, sid=1) + frame(DATA, b"y" * 16000, sid=1)
    assert guard.scan(data, 0.0) == (len(data), None)


@pytest.mark.parametrize("make", [settings, ping,
                                  lambda: frame(PRIORITY, b"\x00" * 5, sid=3),
                                  lambda: frame(WINDOW_UPDATE, b"\x00\x00\x00\x01"),
                                  lambda: frame(DATA, b"", sid=1),
                                  lambda: frame(RST, b"\x00\x00\x00\x08", sid=1)])
def test_a_control_frame_flood_is_a_violation_once_over_the_budget(make: object) -> None:
    limits = FloodLimits(control_base=100, frames_per_turn=1000)
    guard = FrameGuard(limits, now=0.0)
    one = make()  # type: ignore[operator]
    assert guard.scan(PREFACE + one * 100, 0.0)[1] is None  # exactly the budget
    _, violation = guard.scan(one, 0.0)
    assert violation is not None
    assert violation.reason == "h2-control-flood" and violation.error_code == 0xB


def test_empty_data_that_ends_a_stream_is_not_a_control_frame() -> None:
    guard = FrameGuard(FloodLimits(control_base=10, frames_per_turn=1000), now=0.0)
    ends = frame(DATA, b"", flags=0x1, sid=1)
    assert guard.scan(PREFACE + ends * 50, 0.0)[1] is None


def test_streams_and_data_sent_earn_budget() -> None:
    limits = FloodLimits(control_base=10, control_per_stream=5, control_per_16k_sent=10,
                         frames_per_turn=10_000)
    guard = FrameGuard(limits, now=0.0)
    headers = frame(HEADERS, b"\x82", flags=0x5, sid=1)
    assert guard.scan(PREFACE + headers * 4, 0.0) == (len(PREFACE) + 4 * len(headers), None)
    assert guard.budget() == 10 + 4 * 5
    assert guard.scan(ping() * 30, 0.0)[1] is None  # 30 of the 30 allowed
    assert guard.scan(ping(), 0.0)[1] is not None
    fresh = FrameGuard(limits, now=0.0)
    fresh.scan(PREFACE, 0.0, sent_total=16384 * 3)
    assert fresh.budget() == 10 + 3 * 10


def test_counts_decay_over_the_window() -> None:
    limits = FloodLimits(control_base=100, window=10.0, frames_per_turn=1000)
    guard = FrameGuard(limits, now=0.0)
    assert guard.scan(PREFACE + ping() * 100, 0.0)[1] is None
    assert guard.scan(ping(), 0.0)[1] is not None  # over at once
    later = FrameGuard(limits, now=0.0)
    later.scan(PREFACE + ping() * 100, 0.0)
    # 30 s later about 5 % of the count is left: a steady trickle is never a flood
    assert later.scan(ping() * 90, 30.0)[1] is None


def test_a_frame_larger_than_our_max_frame_size_is_refused_from_its_header() -> None:
    guard = FrameGuard(FloodLimits(), now=0.0)
    good = settings()
    huge_header = (16385).to_bytes(3, "big") + bytes([DATA, 0]) + (1).to_bytes(4, "big")
    take, violation = guard.scan(PREFACE + good + huge_header, 0.0)
    assert take == len(PREFACE) + len(good)  # what came before it may still be handled
    assert violation is not None and violation.reason == "h2-frame-too-large"
    assert violation.error_code == 0x6


def test_a_header_block_that_never_ends_is_a_continuation_flood() -> None:
    limits = FloodLimits(max_header_block=1000, frames_per_turn=10_000)
    guard = FrameGuard(limits, now=0.0)
    head = frame(HEADERS, b"a" * 100, sid=1)  # no END_HEADERS
    more = frame(CONTINUATION, b"b" * 100, sid=1)
    _, violation = guard.scan(PREFACE + head + more * 8, 0.0)
    assert violation is None
    _, violation = guard.scan(more * 2, 0.0)
    assert violation is not None and violation.reason == "h2-header-block-too-large"


def test_end_headers_closes_the_block_so_the_next_one_starts_from_zero() -> None:
    limits = FloodLimits(max_header_block=250, frames_per_turn=10_000)
    guard = FrameGuard(limits, now=0.0)
    head = frame(HEADERS, b"a" * 100, sid=1)
    last = frame(CONTINUATION, b"b" * 100, flags=0x4, sid=1)
    block = head + last
    assert guard.scan(PREFACE + block + block + block, 0.0)[1] is None


def test_empty_continuation_frames_count_as_control_frames() -> None:
    guard = FrameGuard(FloodLimits(control_base=20, frames_per_turn=10_000), now=0.0)
    head = frame(HEADERS, b"a", sid=1)
    empty = frame(CONTINUATION, b"", sid=1)
    _, violation = guard.scan(PREFACE + head + empty * 50, 0.0)  # budget: 20 + 20 per stream
    assert violation is not None and violation.reason == "h2-control-flood"


def test_a_remembered_peer_starts_with_its_budget_spent() -> None:
    limits = FloodLimits(control_base=100, frames_per_turn=1000)
    guard = FrameGuard(limits, now=0.0, strikes=1)
    _, violation = guard.scan(PREFACE + ping() * 5, 0.0)
    assert violation is not None


def test_abuse_memory_forgets_after_its_ttl_and_stays_bounded() -> None:
    memory = AbuseMemory(ttl=60.0, capacity=3)
    assert memory.strikes(b"10.0.0.1", 0.0) == 0
    assert memory.strike(b"10.0.0.1", 0.0) == 1
    assert memory.strike(b"10.0.0.1", 1.0) == 2
    assert memory.strikes(b"10.0.0.1", 30.0) == 2
    assert memory.strikes(b"10.0.0.1", 61.0) == 0
    for i in range(5):
        memory.strike(b"10.0.1.%d" % i, 100.0)
    assert len(memory) == 3
    assert memory.strikes(b"10.0.1.0", 100.0) == 0  # the oldest went first
    assert memory.strikes(b"10.0.1.4", 100.0) == 1
