"""Context propagation, the pure part: where a routing key travels and how it is rewritten.

Every module here is a synchronous function over strings and frozen values: no asyncio,
sockets or protocol libraries. The data plane hands in the request's header values and gets
back the key it carries and the headers to set when forwarding.
"""

from forklane.proxy.context.carriers import (
    COMPAT_CARRIERS,
    CarrierPlan,
    KeyResult,
    build_carrier_plan,
    extract_routing_key,
    extract_trace_id,
    inject_routing_key,
)

__all__ = [
    "COMPAT_CARRIERS",
    "CarrierPlan",
    "KeyResult",
    "build_carrier_plan",
    "extract_routing_key",
    "extract_trace_id",
    "inject_routing_key",
]
