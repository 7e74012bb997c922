"""`make demo` end to end (marked slow: `make test-slow` runs it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_runs_every_stage_offline(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "qrl.demo", f"out={tmp_path}", "evaluations=40"],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for stage in ("distill", "quant_eval", "search/ppo", "search/random"):
        assert (tmp_path / stage / "metrics.json").is_file(), stage
    metrics = json.loads((tmp_path / "distill" / "metrics.json").read_text())
    assert metrics["teacher/acc"] >= 0.97 and metrics["student/acc"] >= 0.96
    assert (
        "demo outputs are in" in result.stdout
        and "PPO against the random baseline" in result.stdout
    )
