"""A raw `h2` client for tests that, unlike plain `h2`, keeps its streams after a graceful
GOAWAY (RFC 9113 §6.8 lets streams at or below the last stream id finish; h2 closes its whole
state machine on any GOAWAY).

The override reaches into h2's private `_receive_goaway_frame`, `state_machine.state` and
`_data_to_send`: test_h2graceful_still_works fails when an h2 upgrade breaks them. The proxy
itself no longer uses h2 (its own `forklane.proxy.http2.conn` has this behaviour by design).
"""

from __future__ import annotations

from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.events import Event
from hyperframe.frame import Frame, GoAwayFrame

__all__ = ["GracefulH2Connection"]


class GracefulH2Connection(H2Connection):
    """`H2Connection` that lets streams in flight finish after a GOAWAY with NO_ERROR."""

    def _receive_goaway_frame(
        self, frame: GoAwayFrame
    ) -> tuple[list[Frame], list[Event]]:
        state = self.state_machine.state
        queued = self.data_to_send()
        frames, events = super()._receive_goaway_frame(frame)
        if frame.error_code == ErrorCodes.NO_ERROR and state in (
            ConnectionState.CLIENT_OPEN, ConnectionState.SERVER_OPEN
        ):
            self.state_machine.state = state
            self._data_to_send[:0] = queued
        return frames, events
