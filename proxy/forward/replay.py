"""A bounded copy of a request body, kept so that a request can be sent again (a gRPC call
retried on a status). Envoy's `per_request_buffer_limit_bytes`: a request that outgrows the
limit is simply not replayable any more; it is never failed for its size, and its copy is
dropped at once so the memory goes with it.

Pure bookkeeping over bytes objects the protocol layer already holds (no copies are made).
"""

from __future__ import annotations

__all__ = ["Replay"]


class Replay:
    __slots__ = ("chunks", "ended", "limit", "overflowed", "size", "trailers")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.ended = False
        self.overflowed = False
        self.trailers: list[tuple[bytes, bytes]] | None = None

    def add(self, data: bytes) -> None:
        """Keep `data`, unless the body is now over the limit: then keep nothing."""
        if self.overflowed:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.overflowed = True
            self.chunks.clear()
            return
        self.chunks.append(data)

    def finish(self, trailers: list[tuple[bytes, bytes]] | None) -> None:
        self.ended = True
        self.trailers = trailers

    @property
    def complete(self) -> bool:
        """The whole request is here to send again."""
        return self.ended and not self.overflowed
