"""The carriers a control plane tells its proxies to use (`--carriers`)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from forklane.controlplane.settings import Settings, parse_carriers


def test_default_carriers_are_forklanes_own() -> None:
    carriers = Settings(auth=False).carrier_list()
    assert [(c.kind, c.name, c.emit) for c in carriers] == [
        ("header", "x-forklane-routing-key", True),
        ("baggage", "forklane-routing-key", True),
    ]


def test_migration_carriers_in_priority_order_and_read_only() -> None:
    carriers = parse_carriers(
        "header:x-forklane-routing-key, baggage:forklane-routing-key,"
        " baggage:sd-routing-key:noemit, header:uberctx-sd-routing-key:noemit"
    )
    assert [(c.kind, c.name, c.emit) for c in carriers] == [
        ("header", "x-forklane-routing-key", True),
        ("baggage", "forklane-routing-key", True),
        ("baggage", "sd-routing-key", False),
        ("header", "uberctx-sd-routing-key", False),
    ]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "at least one carrier"),
        ("cookie:session", "'header', 'baggage' or 'tracestate'"),
        ("header:Bad Name", "lowercase token"),
        ("baggage:k:sometimes", "':noemit'"),
        ("header:baggage", "reserved header"),
    ],
)
def test_bad_carriers_are_refused_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        Settings(auth=False, carriers=text)
