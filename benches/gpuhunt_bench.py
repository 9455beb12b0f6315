#!/usr/bin/env python3
"""gpuhunt's own load and query of the catalog that `cargo bench --bench catalog` writes.

Usage:
    python gpuhunt_bench.py PATH/TO/aws.csv

Needs the `gpuhunt` package (`pip install gpuhunt`). Measures, on the same file and with
the same two queries as benches/catalog.rs:
  - load:  gpuhunt's CSV reader (`storage.load`), the work of `Catalog.load` after download;
  - query: `Catalog.query` on the loaded, in-memory catalog (gpuhunt's production path);
  - load+query: `Catalog.query` with GPUHUNT_CATALOG_DIR, which reads the file every query.
Prints the fastest and the median of several runs, and the number of matches.
"""

import os
import statistics
import sys
import time
from pathlib import Path

# The queries of benches/catalog.rs, as dstack's requirements_to_query_filter builds them
# (kpool defaults: cpu 2.., memory 8GB.., disk 100GB..).
QUERIES = {
    # gpu "A100,H100:80GB:1..", spot policy auto
    "gpu query": dict(
        min_cpu=2,
        min_memory=8,
        min_disk_size=100,
        gpu_vendor="nvidia",
        gpu_name=["A100", "H100"],
        min_gpu_count=1,
        min_gpu_memory=80,
        max_gpu_memory=80,
    ),
    # cpu "8..", memory "32GB..", gpu "0", on-demand
    "cpu query": dict(
        min_cpu=8,
        min_memory=32,
        min_disk_size=100,
        min_gpu_count=0,
        max_gpu_count=0,
        spot=False,
    ),
}


def measure(runs, f):
    times = []
    result = None
    for _ in range(runs):
        start = time.perf_counter()
        result = f()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times), result


def ms(seconds):
    return f"{seconds * 1e3:.2f} ms"


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    path = Path(sys.argv[1]).resolve()
    provider = path.stem

    import gpuhunt
    from gpuhunt._internal import storage
    from gpuhunt._internal.catalog import ProviderCatalog
    from gpuhunt.version import __version__

    print(f"gpuhunt {__version__}, python {sys.version.split()[0]}: {path}")

    def load():
        with open(path, encoding="utf-8", newline="") as f:
            return list(storage.load(f, provider=provider))

    fastest, median, items = measure(5, load)
    print(f"load:        fastest {ms(fastest)}, median {ms(median)} (5 runs, {len(items)} rows)")

    catalog = gpuhunt.Catalog(balance_resources=False, auto_reload=False)
    catalog.catalog = {provider: ProviderCatalog(version="bench", items=items)}
    catalog.loaded_at = time.monotonic()
    for name, query in QUERIES.items():
        fastest, median, found = measure(21, lambda: catalog.query(provider=[provider], **query))
        print(f"{name}:   fastest {ms(fastest)}, median {ms(median)} (21 runs, {len(found)} matches)")

    os.environ["GPUHUNT_CATALOG_DIR"] = str(path.parent)
    from_dir = gpuhunt.Catalog(balance_resources=False, auto_reload=False)
    for name, query in QUERIES.items():
        fastest, median, found = measure(3, lambda: from_dir.query(provider=[provider], **query))
        print(f"load+{name}: fastest {ms(fastest)}, median {ms(median)} (3 runs, {len(found)} matches)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
