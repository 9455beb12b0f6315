#!/usr/bin/env bash
# End to end on a throwaway kind cluster: build the image, load it, install the chart,
# and walk runs through reuse and idle teardown (tests/e2e.rs). Needs docker, kind, helm.
set -euo pipefail
cd "$(dirname "$0")/.."
cluster=${KPOOL_E2E_CLUSTER:-kpool-e2e}
kind get clusters | grep -qx "$cluster" || kind create cluster --name "$cluster"
docker build -t kpool:e2e .
kind load docker-image kpool:e2e --name "$cluster"
kubectl apply --server-side -f charts/kpool/crds/
helm upgrade --install kpool charts/kpool -n kpool-system --create-namespace \
  --set image.tag=e2e --set image.pullPolicy=Never --wait --timeout 3m
KPOOL_E2E_INSTALLED=1 cargo test --test e2e -- --ignored --nocapture
echo "e2e passed; delete the cluster with: kind delete cluster --name $cluster"
