"""`python -m qrl.report`: groups by every swept key, statistics over seeds, failures listed."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from qrl import report
from qrl.sweeps import write_overrides

AGENTS = {"ppo": {"name": "ppo", "kind": "sb3", "lr": 0.1}, "es": {"name": "es", "kind": "cma"}}


def make_run(
    root: Path,
    name: str,
    *,
    agent: str,
    bits: int,
    seed: int,
    gap: float | None,
    overrides: bool = True,
    failure: str | None = None,
) -> Path:
    """A run dir as a qrl job leaves it: config, overrides, and metrics or a failure."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    config = {"seed": seed, "out": str(run_dir), "agent": AGENTS[agent], "quant": {"bits": bits}}
    config["data"] = {"seed": seed, "name": "digits"}  # follows the seed, as `${seed}` does
    OmegaConf.save(OmegaConf.create(config), run_dir / "config.yaml")
    if overrides:
        write_overrides(run_dir, [f"agent={agent}", f"quant.bits={bits}", f"seed={seed}"])
    if failure is not None:
        record = {"job": 9, "overrides": [f"agent={agent}"], "error": "ConfigError"}
        (run_dir / "failure.json").write_text(json.dumps({**record, "message": failure}))
    elif gap is not None:
        (run_dir / "metrics.json").write_text(json.dumps({"eval/gap": gap, "seed": seed}))
    return run_dir


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """agent x quant.bits x 3 seeds; gap = bits/100 + seed/1000 (+0.5 for ppo)."""
    n = 0
    for agent in ("ppo", "es"):
        for bits in (4, 8):
            for seed in (0, 1, 2):
                gap = bits / 100 + seed / 1000 + (0.5 if agent == "ppo" else 0)
                make_run(tmp_path, f"{n}", agent=agent, bits=bits, seed=seed, gap=gap)
                n += 1
    return tmp_path


def test_runs_are_grouped_by_every_swept_key(sweep: Path) -> None:
    runs = report.collect_runs(sweep)
    keys, metrics, rows = report.summarize(runs)
    assert keys == ["agent", "quant.bits"] and metrics == ["eval/gap"]
    assert [(r["agent"], r["quant.bits"], r["n"], r["seeds"]) for r in rows] == [
        ("es", "4", 3, [0, 1, 2]),
        ("es", "8", 3, [0, 1, 2]),
        ("ppo", "4", 3, [0, 1, 2]),
        ("ppo", "8", 3, [0, 1, 2]),
    ]
    es4 = rows[0]["eval/gap"]
    assert es4["mean"] == pytest.approx(0.041) and es4["std"] == pytest.approx(0.001)
    low, high = es4["ci"]
    assert 0.040 <= low <= 0.041 <= high <= 0.042


def test_runs_without_overrides_are_never_pooled_across_configs(tmp_path: Path) -> None:
    # Made without Hydra (no overrides.yaml): the configs themselves tell the groups apart.
    for i, (agent, bits) in enumerate([("ppo", 4), ("ppo", 8), ("es", 4), ("es", 4)]):
        make_run(tmp_path, f"r{i}", agent=agent, bits=bits, seed=i, gap=0.1, overrides=False)
    keys, groups = report.group_runs(report.collect_runs(tmp_path))
    assert keys == ["agent.name", "quant.bits"]  # not agent.kind, agent.lr, data.seed
    assert {k: len(v) for k, v in groups.items()} == {
        ("es", "4"): 2,
        ("ppo", "4"): 1,
        ("ppo", "8"): 1,
    }


def test_failed_and_unfinished_runs_are_listed_not_averaged(sweep: Path, capsys) -> None:
    make_run(sweep, "bad", agent="ppo", bits=4, seed=3, gap=None, failure="bits must be 2-8")
    make_run(sweep, "running", agent="es", bits=8, seed=3, gap=None)
    scanned = report.scan_runs(sweep)
    assert [len(scanned[k]) for k in ("finished", "failed", "unfinished")] == [12, 1, 1]
    out = sweep / "summary" / "report.md"
    assert report.main([str(sweep), "--out", str(out)]) == 0
    text = out.read_text()
    assert "failed runs (1, not averaged)" in text and "ConfigError: bits must be 2-8" in text
    assert f"{sweep / 'bad'}" in text and f"{sweep / 'running'}" in text
    assert "unfinished runs (1" in text
    with open(out.with_suffix(".csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    ppo4 = next(r for r in rows if r["agent"] == "ppo" and r["quant.bits"] == "4")
    assert ppo4["n"] == "3" and float(ppo4["eval/gap_mean"]) == pytest.approx(0.541)
    assert out.with_suffix(".png").stat().st_size > 0
    # Tables print percentage points (the CSV above keeps the fraction 0.541).
    assert "| ppo   | 4          | 3 | 0,1,2 | 54.10 ± 0.10 [" in capsys.readouterr().out


def test_several_sweep_dirs_are_one_report(sweep: Path, tmp_path_factory) -> None:
    other = tmp_path_factory.mktemp("second-sweep")
    make_run(other, "0", agent="ppo", bits=2, seed=0, gap=0.9)
    keys, groups = report.group_runs(report.collect_runs(sweep, other))
    assert keys == ["agent", "quant.bits"] and len(groups[("ppo", "2")]) == 1


def test_nothing_to_report_is_an_error(tmp_path: Path) -> None:
    assert report.main([str(tmp_path)]) == 2


def make_task_run(root: Path, name: str, task: str, seed: int, metrics: dict) -> Path:
    """A finished run of `task` made without Hydra: its config names the task."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    config = {"task": task, "seed": seed, "kind": name.split("-")[0]}
    OmegaConf.save(OmegaConf.create(config), run_dir / "config.yaml")
    (run_dir / "metrics.json").write_text(json.dumps({**metrics, "seed": seed}))
    return run_dir


@pytest.fixture
def pair_sweep(tmp_path: Path) -> Path:
    """A detrimental and a robust pair over 2 seeds, as `python -m qrl.pairs` records them."""
    for kind, acc_q in (("detrimental", 0.14), ("robust", 0.99)):
        for seed in (0, 1):
            acc_fp = 0.99 + seed / 1000
            metrics = {"acc_fp": acc_fp, "acc_q": acc_q, "drop": acc_fp - acc_q, "mean_bits": 4.0}
            metrics |= {"teacher_gap": 0.9955 - acc_q, "layer_names": ["a", "b"]}
            make_task_run(tmp_path, f"{kind}-{seed}", "pairs", seed, metrics)
    return tmp_path


def test_a_pairs_sweep_reports_its_drop_and_accuracies_in_percent(pair_sweep: Path, capsys) -> None:
    out = pair_sweep / "report.md"
    assert report.main([str(pair_sweep), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    header = next(line for line in text.splitlines() if line.startswith("| kind"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "kind",
        "n",
        "seeds",
        "drop (points)",
        "acc_fp (%)",
        "acc_q (%)",
        "mean_bits",
    ]
    detrimental = next(line for line in text.splitlines() if line.startswith("| detrimental"))
    assert "| 85.05 ± 0.07 [" in detrimental and "| 99.05 ± 0.07 [" in detrimental
    assert "| 14.00 ± 0.00 [" in detrimental and "| 4.000 ± 0.000 [" in detrimental
    assert " - " not in detrimental  # every cell holds a number
    # Under the table: what each column is, a drop named as the network's own FP minus Q.
    assert "- drop (percentage points): drop = the network's own full-precision accuracy " in text
    assert "- acc_fp (%): the network's full-precision accuracy" in text
    assert "drop (points) per seed:" in text
    with open(out.with_suffix(".csv"), newline="") as f:
        rows = {r["kind"]: r for r in csv.DictReader(f)}
    assert float(rows["detrimental"]["drop_mean"]) == pytest.approx(0.8505)  # files: fractions


def test_a_search_sweep_reports_a_gap_named_by_its_reference_and_a_drop(
    tmp_path: Path, capsys
) -> None:
    for agent in ("es", "random"):
        for seed in (0, 1):
            metrics = {"eval/gap": 0.30, "eval/drop_fp": 0.05, "eval/reference": "teacher"}
            make_task_run(tmp_path, f"{agent}-{seed}", "search", seed, metrics)
    assert report.main([str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "eval/gap (points)" in text and "eval/drop_fp (points)" in text
    assert "| 30.00 ± 0.00 [" in text and "| 5.00 ± 0.00 [" in text
    assert (
        "- eval/gap (percentage points): gap = the teacher's accuracy minus the quantized" in text
    )
    assert "- eval/drop_fp (percentage points): drop = the model's own full-precision" in text
    assert report.default_metrics(report.collect_runs(tmp_path)) == list(report.DEFAULT_METRICS)


def test_a_metric_no_run_holds_is_one_line_naming_the_metrics_that_exist(
    pair_sweep: Path, capsys
) -> None:
    assert report.main([str(pair_sweep), "--metric", "eval/gap", "--metric", "drop"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err == (
        "error: no finished run holds eval/gap; the runs hold: acc_fp, acc_q, drop, mean_bits, "
        "teacher_gap"
    )


def test_runs_of_a_task_with_no_default_metric_are_told_to_pass_one(tmp_path: Path, capsys) -> None:
    make_task_run(tmp_path, "q-0", "quant_eval", 0, {"quant/4bit/acc": 0.9, "teacher/params": 9})
    assert report.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no default metric for runs of task quant_eval: pass --metric")
    assert err.endswith("the runs hold: quant/4bit/acc, teacher/params")
    assert report.main([str(tmp_path), "--metric", "quant/4bit/acc"]) == 0
    assert "| 90.00 " in capsys.readouterr().out
