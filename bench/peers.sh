#!/usr/bin/env bash
# Runs the shared peer benchmark (nginx, HAProxy, a naive aiohttp proxy) with forklane as the
# `project` path, from one run. Settings pass through from the environment: PATHS, DURATION,
# WARMUP, CONNS, RATE, RESULTS_DIR, PIN, ... (see the harness's README).
#   bench/peers.sh                       # everything
#   PATHS="nginx project" bench/peers.sh # just the two that matter for the ratio
# Needs: nginx-light haproxy wrk curl (Debian packages) and the project's virtualenv.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${FORKLANE_PYTHON:-$ROOT/.venv/bin/python}
HARNESS=${HARNESS:-$ROOT/../shared/bench/run-peers.sh}
[[ -x $PY ]] || { echo "no virtualenv at $ROOT/.venv: run 'python3 scripts/dev.py setup' first" >&2; exit 2; }
[[ -f $HARNESS ]] || { echo "benchmark harness not found at $HARNESS (set HARNESS=...)" >&2; exit 2; }
export PYTHON=${PYTHON:-$PY}
export PROXY_CMD=${PROXY_CMD:-"$PY -m forklane.proxy run --config $ROOT/bench/peer-config.yaml --port {port} --admin-port off --inbound-port off ${FORKLANE_ARGS:-}"}
export RESULTS_DIR=${RESULTS_DIR:-$ROOT/bench/results/$(date +%Y%m%d-%H%M%S)}
exec bash "$HARNESS"
