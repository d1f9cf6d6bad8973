"""Fuzzing harnesses (Hypothesis): a short run in the suite, a long one on request.

`FORKLANE_FUZZ_EXAMPLES` sets how many generated inputs each harness tries (the suite's
default keeps each harness to seconds; `python3 scripts/dev.py fuzz` raises it). Every
harness first replays its committed seed corpus (`corpus/<harness>/`), so a crash found once
stays a test.
"""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, settings

CORPUS = Path(__file__).parent / "corpus"

settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("FORKLANE_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture],
    derandomize=os.environ.get("FORKLANE_FUZZ_EXAMPLES") is None,  # the suite: repeatable
)
FUZZ = settings.get_profile("fuzz")


def seeds(harness: str) -> list[bytes]:
    """The committed seed inputs of a harness, in name order."""
    return [p.read_bytes() for p in sorted((CORPUS / harness).iterdir()) if p.is_file()]
