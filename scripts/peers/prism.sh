#!/usr/bin/env bash
# Installs Stoplight Prism (`@stoplight/prism-cli`, from npm) into `.peers/prism/` at the
# repository root for the `lambda` backend's contract tests (tests/backend_lambda.rs), which
# start `.peers/prism/node_modules/.bin/prism mock` themselves on a loopback port with the
# vendored OpenAPI document tests/contracts/lambda-openapi.json.
# Idempotent: does nothing when a working prism binary is already there.
# Needs node (18+) and npm with access to the npm registry.
set -euo pipefail
cd "$(dirname "$0")/../.."

DIR=.peers/prism
PRISM="$DIR/node_modules/.bin/prism"
if [ -x "$PRISM" ] && "$PRISM" --version >/dev/null 2>&1; then
    echo "prism: already installed ($("$PRISM" --version))"
    exit 0
fi

mkdir -p "$DIR"
[ -f "$DIR/package.json" ] || echo '{"name":"kpool-peer-prism","private":true}' >"$DIR/package.json"
npm install --prefix "$DIR" --no-audit --no-fund --silent @stoplight/prism-cli@5
echo "prism: installed in $DIR ($("$PRISM" --version))"
