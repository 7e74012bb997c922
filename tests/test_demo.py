"""`make demo` (`python -m qrl.reproduce`): a small run in `make test`, the real one marked slow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qrl import reproduce
from qrl.config import load_config
from qrl.pairs import load_pair

SMALL = [
    "data=synthetic",
    "+distill.teacher.epochs=3",
    "+distill.student.epochs=3",
    "model.teacher.width=8",
    "model.student.width=4",
    "+pairs.train.rounds=2",
    "+pairs.train.net_steps=2",
    "+pairs.ppo.n_envs=16",
    "+pairs.ppo.model.n_steps=4",
    "+pairs.ppo.model.batch_size=32",
    "search.agents=[random]",
    "search.evaluations=6",
    "+search.overrides.eval.samples=64",
    "cross.pattern_limit=50",
    "progress=false",
]


def test_reproduce_writes_the_contract_and_a_report(tmp_path: Path) -> None:
    """The whole pipeline, small: results.json holds the documented keys, pairs load back."""
    record = reproduce.run(load_config("reproduce", [f"out={tmp_path}", *SMALL]))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results == {k: v for k, v in record.items() if k in results}
    for key in ("teacher/acc", "student/acc"):
        assert 0.0 <= results[key] <= 1.0
    for kind in ("detrimental", "robust"):
        entry = results[kind]
        assert entry["drop"] == pytest.approx(entry["acc_fp"] - entry["acc_q"])
        assert abs(entry["mean_bits"] - 4.0) < 0.05
        assert load_pair(entry["run_dir"]).kind == kind
    text = (tmp_path / "report.md").read_text()
    assert "drop (FP − DPTQ)" in text and "robust policy" in text and "random" in text
    assert (tmp_path / "metrics.json").is_file()
    for name in ("cross_evaluation.png", "detrimental_vulnerability.png", "robust_flipped.png"):
        assert (tmp_path / "seed0" / name).is_file(), name


def test_reproduce_refuses_bad_seeds_before_writing(tmp_path: Path) -> None:
    from qrl.errors import ConfigError

    with pytest.raises(ConfigError, match="seeds"):
        reproduce.run(load_config("reproduce", [f"out={tmp_path / 'x'}", "seeds=[0,0]"]))
    assert not (tmp_path / "x").exists()


def test_a_reproduce_rerun_resumes_its_stages_and_refuses_another_config(tmp_path: Path) -> None:
    from qrl.errors import ConfigError

    cfg = [f"out={tmp_path}", *SMALL]
    reproduce.run(load_config("reproduce", cfg))
    pair_log = (tmp_path / "seed0" / "robust" / "log.csv").read_text()
    reproduce.run(load_config("reproduce", cfg))  # the same config: every stage resumes
    assert (tmp_path / "seed0" / "robust" / "log.csv").read_text() == pair_log
    finished = (tmp_path / "metrics.json").read_text()
    with pytest.raises(ConfigError, match=r"search.evaluations: 6 -> 8"):
        reproduce.run(load_config("reproduce", [*cfg, "search.evaluations=8"]))
    assert (tmp_path / "metrics.json").read_text() == finished
    reproduce.run(load_config("reproduce", [*cfg, "search.evaluations=8", "overwrite=true"]))
    assert (
        json.loads((tmp_path / "search" / "random" / "metrics.json").read_text())["evaluations"]
        == 8  # search and selection together
    )
    assert (tmp_path / "seed0" / "robust" / "log.csv").read_text() == pair_log  # resumed


@pytest.mark.slow
def test_make_demo_reproduces_the_pairs_on_digits(tmp_path: Path) -> None:
    """The default pipeline through the real CLI: the issue's targets on seed 0."""
    result = subprocess.run(
        [sys.executable, "-m", "qrl.reproduce", f"hydra.run.dir={tmp_path}", "progress=false"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    det, rob = results["detrimental"], results["robust"]
    assert det["drop"] >= 0.5
    assert abs(det["acc_fp"] - results["teacher/acc"]) <= 0.01
    assert abs(det["acc_fp"] - rob["acc_fp"]) <= 0.01
    assert rob["drop"] <= 0.01 and rob["drop_uniform"] <= 0.01 and rob["drop_random"] <= 0.01
    twin = [
        r
        for r in results["cross_evaluation"]
        if r["network"] == "detrimental" and r["policy"] == "robust policy"
    ]
    assert twin and twin[0]["drop"] <= 0.02
    assert "drop (FP − DPTQ)" in result.stdout
