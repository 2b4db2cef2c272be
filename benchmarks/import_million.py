"""Import benchmark: a generated 1,000,000-row CSV (mixed formats) into a fresh SQLite database.

Prints the wall time and peak memory of `campaign import` run as a user runs it, then where
the time goes: reading the CSV, normalizing numbers (per core), and the rest of the main
process (classifying, staging and inserting rows).

    python benchmarks/import_million.py [--rows 1000000] [--only body-only|bound]

Targets (DESIGN.md): under 60 s wall (aim 30 s) and under 1 GB peak memory on 2 cores.

It imports the file twice, into two campaigns: one that fills a template's body only (as
every campaign did before `--bind`), and one bound to a template with a text header, body
variables, a URL button and a copy-code button, whose every row is checked against Meta's
parameter rules (the per-row validation must cost under 10% more).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
import recipients  # noqa: E402

from campaign import campaigns, phone  # noqa: E402
from campaign.db import Database  # noqa: E402

OUT = Path(__file__).parent / "out"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--only", choices=["body-only", "bound"], help="one of the two imports (10M rows take 5+ minutes each)")
    args = parser.parse_args()

    OUT.mkdir(exist_ok=True)
    csv_path = OUT / f"recipients-{args.rows}.csv"
    if not csv_path.exists():
        print(f"generating {csv_path} ...", flush=True)
        recipients.write(csv_path, args.rows)
    print(f"file: {csv_path.name}, {csv_path.stat().st_size / 1e6:.1f} MB, {args.rows:,} rows, {os.cpu_count()} cores", flush=True)

    cpu = 0.0
    for mode in [args.only] if args.only else ["body-only", "bound"]:
        wall, cpu, peak, line = _import(csv_path, bound=mode == "bound")
        print(f"{mode:9}: wall {wall:.1f} s, CPU {cpu:.1f} s (all processes), "
              f"peak RSS of the largest process {peak:.0f} MB; {line}", flush=True)

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


BOUND_TEMPLATE = {
    # What `GET /{waba-id}/message_templates` returns for a template with every kind of
    # per-row text: the campaign is given it as launch's check would.
    "name": "order_ready", "language": "en_US", "status": "APPROVED", "category": "UTILITY",
    "parameter_format": "POSITIONAL", "components": [
        {"type": "HEADER", "format": "TEXT", "text": "Order for {{1}}"},
        {"type": "BODY", "text": "Hi {{1}}, your order {{2}} of {{3}} EUR is ready."},
        {"type": "BUTTONS", "buttons": [{"type": "URL", "text": "Track", "url": "https://shop.example.com/t/{{1}}"},
                                         {"type": "COPY_CODE", "example": "A00000001"}]},
    ],
}
BOUND = ["--bind", "header=city", "--bind", "body.1=name", "--bind", "body.2=order_id", "--bind", "body.3=amount",
         "--bind", "button.0=order_id", "--bind", "button.1=order_id"]


def _import(csv_path: Path, *, bound: bool) -> tuple[float, float, float, str]:
    """(wall s, CPU s, peak MB, summary line) of `campaign import` into a fresh database."""
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/bench.db"
        env = {**os.environ, "CAMPAIGN_DATABASE_URL": url}
        campaign = [sys.executable, "-m", "campaign"]
        options = BOUND if bound else ["--param", "name", "--param", "order_id"]
        subprocess.run([*campaign, "create", "bench", "--template", "order_ready" if bound else "order_update",
                        "--language", "en_US", *options], env=env, check=True, capture_output=True)
        if bound:
            db = Database.open(url)
            with db.session() as session:
                campaigns.get(session, "bench").template_definition = BOUND_TEMPLATE
            db.close()
        start = time.perf_counter()
        with open(f"{folder}/out.txt", "w+") as out:
            process = subprocess.Popen([*campaign, "import", "bench", str(csv_path), "--default-region", "DE",
                                        "--rejects", f"{folder}/rejects.csv"], env=env, stdout=out, stderr=subprocess.DEVNULL)
            # wait4: this import's own figures (RUSAGE_CHILDREN would keep the largest peak of every
            # import so far); its ru_maxrss is that of the largest process of its tree.
            _, status, usage = os.wait4(process.pid, 0)
            wall = time.perf_counter() - start
            process.returncode = os.waitstatus_to_exitcode(status)
            if process.returncode != 0:
                raise SystemExit(f"campaign import failed ({process.returncode})")
            out.seek(0)
            line = out.read().strip()
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, line


if __name__ == "__main__":
    main()
