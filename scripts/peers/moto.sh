#!/usr/bin/env bash
# Creates `.venv-moto/` at the repository root with moto's server (EC2 + IAM) for the `aws`
# backend's tests (tests/backend_aws.rs), which start their own `moto_server` on loopback.
# Idempotent: does nothing when the venv already has a working `moto_server`.
# Needs python3 with the venv module and access to PyPI (about 10 s, 140 MB).
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV=.venv-moto
if [ -x "$VENV/bin/moto_server" ] && "$VENV/bin/python" -c 'import moto, flask, flask_cors' 2>/dev/null; then
    echo "moto: already installed ($("$VENV/bin/python" -c 'import moto; print("moto", moto.__version__)'))"
    exit 0
fi

python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check 'moto[ec2]' flask flask-cors
echo "moto: installed in $VENV ($("$VENV/bin/python" -c 'import moto; print("moto", moto.__version__)'))"
