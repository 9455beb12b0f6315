#!/usr/bin/env python3
"""Runs gpuhunt's own query on a local catalog, for kpool's differential test.

Usage:
    python gpuhunt_query.py CATALOG_DIR [CASES_JSON]

CATALOG_DIR holds gpuhunt v2 CSV files (`aws.csv`, `gcp.csv`, ...). CASES_JSON (a file,
or standard input when not given) is a list of cases:

    [{"id": "a100-auto", "query": {"min_gpu_count": 1, "gpu_name": ["A100"], ...}}, ...]

where `query` holds keyword arguments of `gpuhunt.Catalog.query` (what dstack's
`requirements_to_query_filter` produces). `provider` defaults to every provider of
CATALOG_DIR. Prints JSON to standard output:

    {"gpuhunt": "0.1.34", "results": {"a100-auto": [["aws", "p4d.24xlarge", "us-east-1", false], ...]}}

Each result row is (provider, instance_name, location, spot), in gpuhunt's order. Needs
the `gpuhunt` package (`pip install gpuhunt`); reads nothing from the network.
"""

import json
import os
import sys
from pathlib import Path


def main() -> int:
    if len(sys.argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    catalog_dir = Path(sys.argv[1]).resolve()
    # gpuhunt reads `<provider>.csv` from this directory instead of downloading catalogs.
    os.environ["GPUHUNT_CATALOG_DIR"] = str(catalog_dir)

    import gpuhunt
    from gpuhunt.version import __version__

    if len(sys.argv) == 3:
        cases = json.loads(Path(sys.argv[2]).read_text())
    else:
        cases = json.load(sys.stdin)

    providers = sorted(p.stem for p in catalog_dir.glob("*.csv"))
    catalog = gpuhunt.Catalog(balance_resources=False, auto_reload=False)
    results = {}
    for case in cases:
        query = dict(case["query"])
        query.setdefault("provider", providers)
        items = catalog.query(**query)
        results[case["id"]] = [[i.provider, i.instance_name, i.location, i.spot] for i in items]
    json.dump({"gpuhunt": __version__, "results": results}, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
