"""Signed routing keys: `KEY.SIGNATURE`, checked before a request may reach a fork.

The control plane issues keys as `KEY.SIGNATURE`, where the signature is an HMAC-SHA256
(first 128 bits, lowercase hex) over the key, the sandbox, the tenant and the expiry, under
the newest of its signing secrets. The proxy learns the same four values for every key from
the snapshot (its forks), and the secrets too (newest first, so a rotation accepts old and
new until the old one is dropped). So the proxy computes, once per table, every signed form
it accepts, and a request costs one dict look-up and one clock comparison.

Invariants:
- the signature alphabet (`[a-f0-9]`) and the `.` separator keep a signed key inside the
  routing-key alphabet, so every carrier (header, baggage, tracestate) takes it untouched;
- the same bytes are signed on both sides: `signed_message()` is the one definition;
- a key that is unsigned, wrongly signed or past its expiry never names a fork: the verdict
  says which, so it is counted, and the request goes to the baseline;
- pure: the clock comes in as a callable; no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = [
    "KeyClaims",
    "KeyVerifier",
    "Rejection",
    "sign_routing_key",
    "signed_message",
]

SIGNATURE_HEX: Final = 32  # 128 bits: forging one is out of reach, the key stays short
Rejection = Literal["unsigned", "bad-signature", "expired"]
_HEX: Final = frozenset("0123456789abcdef")


def signed_message(key: str, sandbox: str, tenant: str, expires_at: int | None) -> bytes:
    """The bytes an HMAC covers. Fields are joined with a byte none of them may hold (names
    and keys are restricted alphabets), so no two tuples give the same message."""
    expiry = "-" if expires_at is None else str(int(expires_at))
    return "\n".join(("forklane-routing-key-v1", key, sandbox, tenant, expiry)).encode()


def sign_routing_key(
    secret: str, key: str, sandbox: str, tenant: str, expires_at: int | None
) -> str:
    """`KEY.SIGNATURE` for the given claims under `secret`."""
    digest = hmac.new(
        secret.encode(), signed_message(key, sandbox, tenant, expires_at), hashlib.sha256
    ).hexdigest()
    return f"{key}.{digest[:SIGNATURE_HEX]}"


@dataclass(frozen=True, slots=True)
class KeyClaims:
    """What a key was issued for; the signature covers every field."""

    sandbox: str
    tenant: str
    expires_at: int | None  # epoch seconds; None: no expiry


@dataclass(frozen=True, slots=True)
class KeyVerifier:
    """Every signed form a table accepts, computed once when the table is built."""

    accepted: Mapping[str, tuple[str, int | None]]  # signed form -> (bare key, expiry)
    clock: Callable[[], float] = field(compare=False)

    @classmethod
    def build(
        cls,
        secrets: Iterable[str],
        claims: Mapping[str, KeyClaims],
        clock: Callable[[], float],
    ) -> KeyVerifier:
        accepted: dict[str, tuple[str, int | None]] = {}
        for secret in secrets:
            for key, c in claims.items():
                signed = sign_routing_key(secret, key, c.sandbox, c.tenant, c.expires_at)
                accepted[signed] = (key, c.expires_at)
        return cls(accepted, clock)

    def verify(self, presented: str) -> tuple[str | None, Rejection | None]:
        """(bare key, None) when `presented` is validly signed and not expired, otherwise
        (None, why)."""
        hit = self.accepted.get(presented)
        if hit is None:
            _, dot, sig = presented.rpartition(".")
            if dot and len(sig) == SIGNATURE_HEX and all(c in _HEX for c in sig):
                return None, "bad-signature"
            return None, "unsigned"
        key, expires_at = hit
        if expires_at is not None and self.clock() >= expires_at:
            return None, "expired"
        return key, None
