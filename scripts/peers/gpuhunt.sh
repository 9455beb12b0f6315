#!/usr/bin/env bash
# Installs dstack's gpuhunt (PyPI) into .venv-gpuhunt: the reference the catalog tests
# compare kpool's offer matching with (tests/catalog.rs, differential_against_gpuhunt).
# Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ ! -x .venv-gpuhunt/bin/python ] || ! .venv-gpuhunt/bin/python -c 'import gpuhunt' 2>/dev/null; then
  python3 -m venv .venv-gpuhunt
  .venv-gpuhunt/bin/pip install --quiet gpuhunt
fi
echo "gpuhunt: $(.venv-gpuhunt/bin/python -c 'import importlib.metadata as m; print(m.version("gpuhunt"))')"
