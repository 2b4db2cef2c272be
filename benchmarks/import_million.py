"""Import benchmark: a generated 1,000,000-row CSV (mixed formats) into a fresh SQLite database.

Prints the wall time and peak memory of `campaign import` run as a user runs it, then where
the time goes: reading the CSV, normalizing numbers (per core), and the rest of the main
process (classifying, staging and inserting rows).

    python benchmarks/import_million.py [--rows 1000000]

Targets (DESIGN.md): under 60 s wall (aim 30 s) and under 1 GB peak memory on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
import recipients  # noqa: E402

from campaign import phone  # noqa: E402

OUT = Path(__file__).parent / "out"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()

    OUT.mkdir(exist_ok=True)
    csv_path = OUT / f"recipients-{args.rows}.csv"
    if not csv_path.exists():
        print(f"generating {csv_path} ...", flush=True)
        recipients.write(csv_path, args.rows)
    print(f"file: {csv_path.name}, {csv_path.stat().st_size / 1e6:.1f} MB, {args.rows:,} rows, {os.cpu_count()} cores")

    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "CAMPAIGN_DATABASE_URL": f"sqlite:///{folder}/bench.db"}
        campaign = [sys.executable, "-m", "campaign"]
        subprocess.run([*campaign, "create", "bench", "--template", "order_update", "--language", "en_US",
                        "--param", "name", "--param", "order_id"], env=env, check=True, capture_output=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run([*campaign, "import", "bench", str(csv_path), "--default-region", "DE",
                               "--rejects", f"{folder}/rejects.csv"], env=env, check=True, capture_output=True, text=True)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"campaign import: {done.stdout.strip()}")
    print(f"wall {wall:.1f} s, CPU {cpu:.1f} s (all processes), peak RSS of the largest process {after.ru_maxrss / 1024:.0f} MB")

    # Where the time goes, measured apart.
    start = time.perf_counter()
    raws: list[str] = []
    for chunk in pd.read_csv(csv_path, dtype=str, keep_default_na=False, na_filter=False, chunksize=50_000):
        chunk.to_json(orient="records", lines=True, force_ascii=False)
        if len(raws) < 100_000:
            raws.extend(chunk["phone"].tolist())
    read = time.perf_counter() - start
    start = time.perf_counter()
    for raw in raws[:100_000]:
        phone.normalize(raw, "DE")
    per_core = len(raws[:100_000]) / (time.perf_counter() - start)
    print(f"reading the CSV with pandas (+ params to JSON): {read:.1f} s")
    print(f"normalizing: {per_core:,.0f} numbers/s on one core = {args.rows / per_core:.1f} CPU-s for the file, "
          f"spread over {os.cpu_count()} worker processes")
    print(f"the rest of the main process (classify, stage, insert, commit): about {cpu - args.rows / per_core - read:.1f} CPU-s")


if __name__ == "__main__":
    main()
