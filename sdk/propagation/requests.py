"""requests glue: a transport adapter that adds the carrier headers to every request.

`HTTPAdapter.add_headers` is requests' documented hook, called for every request a session
sends (redirects included), in the calling thread, so the caller's context is current.
"""

from __future__ import annotations

from typing import Any

import requests
from requests.adapters import HTTPAdapter

from forklane.propagation._context import outgoing_headers

__all__ = ["ForklaneAdapter", "instrument_session"]


class ForklaneAdapter(HTTPAdapter):
    """An `HTTPAdapter` that adds the current routing context's carrier headers."""

    def add_headers(self, request: requests.PreparedRequest, **kwargs: Any) -> None:
        super().add_headers(request, **kwargs)
        for name, value in outgoing_headers(request.headers.keys()).items():
            request.headers[name] = value


def instrument_session(session: requests.Session, **adapter_kwargs: Any) -> requests.Session:
    """Mount a `ForklaneAdapter` for http:// and https:// on `session` and return it."""
    adapter = ForklaneAdapter(**adapter_kwargs)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
