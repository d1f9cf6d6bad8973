"""The error table is the one list of answers the proxy makes itself, and the README's list
of errors is checked against it, both ways."""

from __future__ import annotations

import re
from pathlib import Path

from forklane.proxy import schema
from forklane.proxy.forward import errors
from forklane.proxy.table import build_table

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_rows() -> dict[str, tuple[int, int]]:
    text = README.read_text()
    section = text.split("### Errors you may see from the proxy", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `([a-z0-9-]+)` \| (\d{3}) \| (\d+) [A-Z_]+ \|", section, re.M)
    return {reason: (int(status), int(grpc)) for reason, status, grpc in rows}


def test_readme_lists_every_error_with_its_statuses() -> None:
    listed = _readme_rows()
    table = {e.reason: (e.status, e.grpc_status) for e in errors.ERRORS.values()}
    assert listed == table


def test_reasons_are_unique_and_wire_safe() -> None:
    for reason, error in errors.ERRORS.items():
        assert reason == error.reason
        assert re.fullmatch(r"[a-z][a-z0-9-]*", reason)
        assert 400 <= error.status < 600
        assert error.counter in ("rejected", "upstream", "attempts", "none")


def test_route_rejects_name_errors_of_the_table() -> None:
    table = build_table(schema.RoutingSnapshot.model_validate({"version": "1"}))
    assert errors.error_for(table.no_route.error) is errors.NO_ROUTE
    assert errors.NO_ROUTE.status == table.no_route.status
