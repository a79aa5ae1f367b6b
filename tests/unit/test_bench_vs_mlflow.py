"""``bench/vs_mlflow.py`` keeps working: 200 traces into MLflow's SQL store and ours, a real
``mlflow server``, one timed run. It exits 0 only if every figure agrees with MLflow's or differs
for a known cause, and the counts must be equal on all three sides (exact, MLflow, ours)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration  # starts an MLflow server


def test_vs_mlflow_runs_and_agrees() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.vs_mlflow", "--traces", "200", "--runs", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "200 sampled traces read back from MLflow equal the generated records" in out
    assert "| traces | 200 | 200 | 200 | equal |" in out
    for figure in ("OK traces", "ERROR traces", "input tokens (sum)", "total tokens (sum)"):
        row = next(line for line in out.splitlines() if line.startswith(f"  | {figure} |"))
        assert row.endswith("| equal |"), row
    assert "equal, hour by hour" in out
    assert "UNEXPLAINED" not in out and "DISAGREEMENT" not in out
    assert "MLflow `query_trace_metrics` via `mlflow server`" in out
