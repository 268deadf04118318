"""Exhaustive single-byte corruption of result cells: flip every byte of each cell file in turn
and read it back through ``ResultsStore.read_cell``. Each flip must either be caught (an
``IntegrityError``) or change nothing that is read (rows and metadata identical); a flip that
changes what is read without being caught is a wrong number, and fails the script.

    python benchmarks/integrity.py --results DIR [--cells 3]

Not a speed benchmark: it prints one JSON line per cell file and a summary (quoted in
docs/reliability.md). With no --results it first runs a small ``bench run`` into a temporary
directory (synthetic-prism:dim=32,users=40; oracle, rm, bt; one split).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", default=None)
    ap.add_argument("--cells", type=int, default=3)
    a = ap.parse_args()
    from bench.errors import IntegrityError
    from bench.store import ResultsStore

    if a.results is None:
        from bench.cli import main as bench

        a.results = tempfile.mkdtemp(prefix="bench-integrity-")
        code = bench(["run", "--methods", "oracle,rm,bt", "--dataset", "synthetic-prism:dim=32,users=40", "--seeds", "0",
                      "--param", "bt.iterations=20", "--no-table", "--results", a.results])
        if code != 0:
            return code
    store = ResultsStore(a.results)
    totals = {"files": 0, "flips": 0, "caught": 0, "harmless": 0, "wrong": 0}
    for path in sorted(store.cells_dir.glob("*.parquet"))[: a.cells]:
        good = path.read_bytes()
        rows, meta = store.read_cell(path)
        got = {"file": path.name, "bytes": len(good), "caught": 0, "harmless": 0, "wrong": []}
        try:
            for pos in range(len(good)):
                data = bytearray(good)
                data[pos] ^= 0x5A
                path.write_bytes(bytes(data))
                try:
                    r2, m2 = store.read_cell(path)
                except IntegrityError:
                    got["caught"] += 1
                    continue
                if r2.equals(rows) and m2 == meta:
                    got["harmless"] += 1
                else:
                    got["wrong"].append(pos)
        finally:
            path.write_bytes(good)
        print(json.dumps(got))
        totals["files"] += 1
        totals["flips"] += len(good)
        totals["caught"] += got["caught"]
        totals["harmless"] += got["harmless"]
        totals["wrong"] += len(got["wrong"])
    print(json.dumps({"summary": totals}))
    return 1 if totals["wrong"] else 0


if __name__ == "__main__":
    sys.exit(main())
