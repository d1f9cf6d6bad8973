"""The tests' graceful-GOAWAY h2 client still works with the installed h2: a response that
follows a NO_ERROR GOAWAY in the same read is delivered, where plain h2 raises."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest

from tests.support.h2graceful import GracefulH2Connection

REQUEST = [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "x")]


def exchange(client: h2.connection.H2Connection) -> list[h2.events.Event]:
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    client.send_headers(1, REQUEST, end_stream=True)
    server.receive_data(client.data_to_send())
    server.send_headers(1, [(":status", "200")], end_stream=True)
    response = server.data_to_send()
    server.close_connection(0, last_stream_id=1)
    goaway = server.data_to_send()
    return client.receive_data(goaway + response)  # GOAWAY first, then the answer


def test_h2graceful_still_works() -> None:
    events = exchange(GracefulH2Connection(h2.config.H2Configuration(client_side=True)))
    assert [type(e).__name__ for e in events] == [
        "ConnectionTerminated", "ResponseReceived", "StreamEnded"]


def test_plain_h2_needs_the_override() -> None:
    with pytest.raises(h2.exceptions.ProtocolError):
        exchange(h2.connection.H2Connection(h2.config.H2Configuration(client_side=True)))
