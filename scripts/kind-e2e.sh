#!/usr/bin/env bash
# End to end on a real cluster, for people with Docker: kind, the image, the chart, a
# labelled namespace, and a request steered to a fork by its routing key.
#
# NOT RUN IN CI: the project's machines have no Docker engine and cannot run a cluster, so
# this script is documentation that happens to be executable. The same behaviour is tested
# without a cluster by the fake API server tests (tests/integration/test_discovery.py,
# test_webhook.py, test_incluster_auth.py) and the chart tests (tests/e2e/test_chart.py).
#
# Needs: docker, kind, kubectl, helm, and python3 with this repository's .venv
# (python3 scripts/dev.py setup). Usage: scripts/kind-e2e.sh [--keep]
set -euo pipefail
cd "$(dirname "$0")/.."
CLUSTER=forklane-e2e
KEEP=${1:-}
FORKLANE=.venv/bin/forklane

cleanup() {
  [[ -n "${PF_PID:-}" ]] && kill "$PF_PID" 2>/dev/null || true
  [[ "$KEEP" == "--keep" ]] || kind delete cluster --name "$CLUSTER"
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }

step "cluster and image"
kind create cluster --name "$CLUSTER" --wait 120s
docker build -t forklane:e2e .
kind load docker-image forklane:e2e --name "$CLUSTER"

step "the chart (SQLite, generated webhook certificate)"
helm install forklane charts/forklane --namespace forklane --create-namespace \
  --set image.tag=e2e --set image.pullPolicy=Never --wait --timeout 180s
kubectl -n forklane rollout status deploy/forklane-forklane --timeout=120s
until kubectl get mutatingwebhookconfiguration forklane-forklane \
    -o jsonpath='{.webhooks[0].clientConfig.caBundle}' | grep -q .; do sleep 1; done

step "a namespace labelled for injection, a baseline, a fork and a client"
kubectl create namespace shop
kubectl label namespace shop forklane.io/inject=enabled
kubectl apply -n shop -f - <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata: {name: pricing}
spec:
  selector: {matchLabels: {app: pricing}}
  template:
    metadata: {labels: {app: pricing}}
    spec:
      containers:
        - name: pricing
          image: forklane:e2e
          imagePullPolicy: Never
          command: [sh, -c, "mkdir -p /tmp/w && echo v1 > /tmp/w/index.html && cd /tmp/w && exec python -m http.server 8080"]
          ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: pricing}
spec:
  selector: {app: pricing}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: pricing-v2}
spec:
  selector: {matchLabels: {app: pricing-v2}}
  template:
    metadata:
      labels: {app: pricing-v2}
      annotations: {forklane.io/inject: "false"}
    spec:
      containers:
        - name: pricing
          image: forklane:e2e
          imagePullPolicy: Never
          command: [sh, -c, "mkdir -p /tmp/w && echo v2 > /tmp/w/index.html && cd /tmp/w && exec python -m http.server 8080"]
          ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: pricing-v2}
spec:
  selector: {app: pricing-v2}
  ports: [{name: http, port: 8080, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client}
spec:
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      containers:
        - name: client
          image: forklane:e2e
          imagePullPolicy: Never
          command: [sleep, infinity]
YAML
kubectl -n shop rollout status deploy/pricing deploy/pricing-v2 deploy/client --timeout=180s
containers=$(kubectl -n shop get pod -l app=pricing -o jsonpath='{.items[0].spec.containers[*].name}')
[[ "$containers" == "forklane-proxy pricing" ]] || { echo "not injected: $containers"; exit 1; }

step "the control plane discovered pricing.shop"
kubectl -n forklane port-forward svc/forklane-forklane 18080:8080 >/dev/null & PF_PID=$!
sleep 2
TOKEN=$(kubectl -n forklane logs deploy/forklane-forklane | sed -n 's/.*bootstrap admin token[^:]*: //p' | head -1)
export FORKLANE_URL=http://127.0.0.1:18080 FORKLANE_TOKEN=$TOKEN
$FORKLANE service get pricing.shop

step "a sandbox forking pricing.shop, and a request with and without its key"
KEY=$($FORKLANE sandbox create --name e2e --fork pricing.shop=pricing-v2.shop.svc.cluster.local:8080 \
  --wait -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["spec"]["routingKey"])')
call() { kubectl -n shop exec deploy/client -c client -- python -c "
import sys, urllib.request
req = urllib.request.Request('http://pricing.shop/', headers=dict(h.split(': ', 1) for h in sys.argv[1:]))
print(urllib.request.urlopen(req, timeout=5).read().decode().strip())" "$@"; }
[[ "$(call)" == v1 ]] || { echo "baseline did not answer"; exit 1; }
[[ "$(call "x-forklane-routing-key: $KEY")" == v2 ]] || { echo "the fork did not answer"; exit 1; }
echo "ok: without the key -> v1, with it -> v2"
