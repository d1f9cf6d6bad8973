#!/usr/bin/env bash
# Per-request cost of context propagation: phase R (fixed 1,000 req/s, Poisson arrivals) of the
# shared peer benchmark, with forklane run three ways in one invocation, back to back:
#   off      no propagation feature (the default)
#   repair   --trace-repair --trace-gaps (trace memory on both listeners' path)
#   tracing  --tracing, every request sampled, spans exported over OTLP/HTTP to a local sink
#   tracing-1pct  --tracing with OTEL_TRACES_SAMPLER=traceidratio, 1 % of the traces sampled
# Compare the ratios of one run (the machine is shared; absolute numbers drift between runs).
#   bench/propagation_cost.sh
#   VARIANTS="off tracing" DURATION=5s bench/propagation_cost.sh
# Settings pass through to the harness (RATE, RATE_SECS, DURATION, WARMUP, PIN, ...).
# The load carries the routing header and no traceparent, so `repair` measures what the hook
# costs on every request; `bench/propagation_cost.py` times the remember/restore work itself.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${FORKLANE_PYTHON:-$ROOT/.venv/bin/python}
VARIANTS=${VARIANTS:-"off repair tracing tracing-1pct"}
SINK_PORT=${SINK_PORT:-18094}
OUT=${RESULTS_DIR:-$ROOT/bench/results/propagation-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"

SINK_PID=
stop_sink() {
    if [[ -n $SINK_PID ]] && kill -0 "$SINK_PID" 2>/dev/null; then
        kill -TERM "$SINK_PID"; wait "$SINK_PID" 2>/dev/null || true
    fi
}
trap stop_sink EXIT

# An OTLP/HTTP sink that accepts and discards spans (the collector's cost is not ours).
"$PY" - "$SINK_PORT" >"$OUT/otlp-sink.log" 2>&1 <<'PYEOF' &
import sys
from aiohttp import web

async def traces(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=b"", content_type="application/x-protobuf")

app = web.Application(client_max_size=64 * 1024 * 1024)
app.router.add_post("/v1/traces", traces)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
PYEOF
SINK_PID=$!

for variant in $VARIANTS; do
    case $variant in
    off) args="" sampler=parentbased_always_on ;;
    repair) args="--trace-repair --trace-gaps" sampler=parentbased_always_on ;;
    tracing) args="--tracing" sampler=parentbased_always_on ;;
    tracing-1pct) args="--tracing" sampler=traceidratio ;;
    *) echo "unknown variant $variant (off|repair|tracing|tracing-1pct)" >&2; exit 2 ;;
    esac
    echo "== $variant: ${args:-no propagation flags} (sampler $sampler)" >&2
    OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$SINK_PORT" OTEL_SERVICE_NAME=forklane-bench \
    OTEL_TRACES_SAMPLER=$sampler OTEL_TRACES_SAMPLER_ARG=0.01 \
    PATHS=${PATHS:-project} FORKLANE_ARGS="$args" RESULTS_DIR="$OUT/$variant" \
        bash "$ROOT/bench/peers.sh" >/dev/null
done

# One table: phase R of every variant, ratios against `off`.
"$PY" - "$OUT" $VARIANTS <<'PYEOF' | tee "$OUT/propagation.md"
import csv, sys
from pathlib import Path

out, variants = Path(sys.argv[1]), sys.argv[2:]
rows = {}
for v in variants:
    with open(out / v / "summary.tsv") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            if row["path"] == "project":
                rows[v] = row
base = rows.get("off")
print("| forklane | R req/s | R p50 µs | R p99 µs | R cores @rate | R errors | p50 vs off | p99 vs off | cores vs off |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for v, r in rows.items():
    def ratio(col: str) -> str:
        if base is None or not base[col] or not r[col] or float(base[col]) == 0:
            return "-"
        return f"{float(r[col]) / float(base[col]):.2f}"
    print(f"| {v} | {r['R_rps']} | {r['R_p50_us']} | {r['R_p99_us']} | {r['R_cpu_cores']} | {r['R_errors']} "
          f"| {ratio('R_p50_us')} | {ratio('R_p99_us')} | {ratio('R_cpu_cores')} |")
PYEOF
echo "results: $OUT" >&2
