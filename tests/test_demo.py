"""`campaign demo` end to end, as the README's first command runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest


@pytest.mark.slow
def test_campaign_demo_runs_the_whole_job_and_leaves_nothing_behind(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WA_", "CAMPAIGN_"))}
    done = subprocess.run([sys.executable, "-m", "campaign", "demo", "--folder", str(tmp_path / "demo")],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "imported 295 recipients (16 rejected)" in done.stdout
    assert "delivery rate" in done.stdout.lower()
    report = tmp_path / "demo" / "demo-report.csv"
    chart = tmp_path / "demo" / "demo-chart.png"
    rows = pd.read_csv(report, dtype=str, keep_default_na=False)
    assert len(rows) == 295
    assert set(rows["status"]) <= {"sent", "delivered", "read", "failed"}
    assert (rows["status"] == "read").sum() > 100  # the sandbox reads about 60% of delivered messages
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    leftover = subprocess.run(["pgrep", "-f", f"campaign.*{tmp_path}"], capture_output=True, text=True)
    assert leftover.stdout.strip() == ""
