"""`python -m qrl.search`: equal budgets, held-out evaluation, archive, real-kernel confirmation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qrl import report, search
from qrl.agents import SearchLog
from qrl.config import CONF_DIR, load_config
from qrl.envs.failure_task import FailureTask
from qrl.errors import ConfigError
from qrl.heldout import score_held_out
from qrl.quant import preset
from qrl.stats import cluster_bootstrap_ci
from qrl.victim import load_victim

# archive.grid=4: failures.png with 4 images, not 32 (drawing them is most of a tiny search).
FAST = [
    "env.batch_size=64",
    "eval.samples=512",
    "eval.bootstrap=500",
    "archive.grid=4",
    "progress=false",
]


def _search(digits_run: Path, out: Path, *overrides: str) -> dict:
    cfg = load_config("search", [f"victim.run={digits_run}", f"out={out}", *FAST, *overrides])
    return search.run(cfg)


@pytest.mark.parametrize("agent", sorted(p.stem for p in (CONF_DIR / "agent").glob("*.yaml")))
def test_every_agent_spends_exactly_the_budget(
    digits_run: Path, tmp_path: Path, agent: str
) -> None:
    metrics = _search(
        digits_run, tmp_path, f"agent={agent}", "budget.evaluations=24", "confirm.backends=[]"
    )
    # 5% of the budget (one evaluation) re-scores the top of the search; both count.
    assert metrics["search/evaluations"] == 23 and metrics["select/evaluations"] == 1
    assert metrics["evaluations"] == 24
    assert 1 <= metrics["search/evaluations_to_best_batch"] <= 23
    rows = [r for r in (tmp_path / "log.csv").read_text().splitlines() if ",search/reward," in r]
    assert len(rows) == 23


@pytest.fixture(scope="module")
def searched(digits_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A random search with the default real-kernel confirmation (ONNX Runtime), run once."""
    out = tmp_path_factory.mktemp("searched")
    metrics = _search(digits_run, out, "agent=random", "budget.evaluations=30", "archive.top_k=5")
    return out, metrics


def test_search_writes_every_result_and_metrics_last(searched: tuple[Path, dict]) -> None:
    tmp_path, metrics = searched
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    # `search.run` returns the SearchResult's `to_metrics()`: exactly what metrics.json holds.
    assert metrics == on_disk
    own = {k for k in on_disk if k not in ("seed", "git_sha", "wall_time_s", "qrl_version")}
    assert own - {"evaluations"} == {
        k for k in own if k.split("/")[0] in ("search", "select", "eval", "baseline", "confirm")
    } | {"policy/description", "policy/action"}
    for key in (
        "search/best_batch_gap",
        "select/gap",
        "select/gap_ci_low",
        "select/gap_ci_high",
        "select/valid_rate",
        "eval/valid",
        "eval/gap",
        "eval/gap_ci_low",
        "eval/gap_ci_high",
        "eval/acc_teacher",
        "eval/acc_q",
        "search/evaluations",
        "search/evaluations_to_best_batch",
        "confirm/gap",
        "seed",
        "wall_time_s",
    ):
        assert key in on_disk, key
    assert on_disk["eval/gap_ci_low"] <= on_disk["eval/gap"] <= on_disk["eval/gap_ci_high"]
    assert on_disk["confirm/backend"] == "onnxruntime"  # torch_ao skipped: the student has convs
    assert "confirm/torch_ao/gap" not in on_disk
    # The kernel's numbers on the data's own distribution, and the simulator's beside them.
    assert on_disk["confirm/onnxruntime/simulator"] == "onnx_int8_dynamic"
    for key in ("baseline/acc_q", "baseline/sim/acc_q", "sim/gap", "sim/gap_ci_low"):
        assert f"confirm/onnxruntime/{key}" in on_disk, key
    assert isinstance(on_disk["confirm/warnings"], list)
    archive = json.loads((tmp_path / "archive.json").read_text())
    assert len(archive) == 5 and archive[0]["reward"] == pytest.approx(
        metrics["search/best_batch_reward"]
    )
    assert [a["reward"] for a in archive] == sorted((a["reward"] for a in archive), reverse=True)
    # The reported policy is the selection's: one of the archive's top, re-scored.
    chosen = archive[int(metrics["select/search_rank"]) - 1]
    assert chosen["policy"] == metrics["policy/description"]
    assert chosen["evaluation"] == metrics["select/evaluation"]
    for name in ("failures.png", "search_curve.png", "archive.csv", "config.yaml"):
        assert (tmp_path / name).stat().st_size > 0
    newest = max(tmp_path.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    assert newest.name == "metrics.json"


@pytest.mark.exact_int8
def test_the_kernel_and_its_simulator_agree_on_a_healthy_student(
    searched: tuple[Path, dict],
) -> None:
    _, metrics = searched
    assert metrics["confirm/warnings"] == []  # a healthy student: simulator and kernel agree


def test_held_out_evaluation_uses_fresh_inputs_and_a_valid_interval(digits_run: Path) -> None:
    victim = load_victim(digits_run, preset("int4_dynamic"))
    task = FailureTask(victim, split="test", mode="input")
    assert task.pool is victim.data.test  # the search draws from train; held-out from test
    action = np.zeros(task.action_space.shape)
    action[0] = 0.6  # brighter images
    small = score_held_out(task, action, samples=256, seed=1, resamples=500)
    large = score_held_out(task, action, samples=4096, seed=1, resamples=500)
    again = score_held_out(task, action, samples=4096, seed=1, resamples=500)
    assert large.gap == again.gap and large.ci == again.ci
    assert small.ci[0] <= small.gap <= small.ci[1]
    assert large.ci[1] - large.ci[0] < small.ci[1] - small.ci[0]
    assert large.gap == pytest.approx(large.acc_teacher - large.acc_q)
    x, y, pred = large.failures
    assert len(x) == len(y) == len(pred) and bool((pred != y).all())


def test_onnxruntime_can_be_the_victim_itself(digits_run: Path, tmp_path: Path) -> None:
    metrics = _search(
        digits_run,
        tmp_path,
        "quant=int8_dynamic",
        "quant.backend=onnxruntime",
        "agent=random",
        "budget.evaluations=10",
    )
    assert metrics["evaluations"] == 10 and "confirm/onnxruntime/gap" not in metrics
    with pytest.raises(ConfigError, match="needs the simulated quantizer"):
        _search(
            digits_run,
            tmp_path / "bits",
            "quant=int8_dynamic",
            "quant.backend=onnxruntime",
            "space=bits",
            "budget.evaluations=5",
        )


@pytest.mark.parametrize("space", ["bits", "joint"])
def test_bit_width_policies_are_searched_under_the_budget(
    digits_run: Path, tmp_path: Path, space: str
) -> None:
    metrics = _search(digits_run, tmp_path, f"space={space}", "agent=es", "budget.evaluations=20")
    archive = json.loads((tmp_path / "archive.json").read_text())
    assert all(row["mean_bits"] <= 4.0 for row in archive)
    assert "bits " in metrics["policy/description"]
    assert ("confirm/gap" in metrics) == (space == "joint")  # int8 kernels take inputs, not bits


def test_search_log_keeps_only_the_budget() -> None:
    log = SearchLog(budget=2)
    for reward in (0.1, 0.5, 0.9):
        log.record(np.zeros(2), reward, {"gap": reward})
    assert log.count == 2 and log.best is not None and log.best.reward == 0.5


def test_wandb_offline_run_can_be_synced_later(
    digits_run: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    _search(
        digits_run,
        tmp_path,
        "agent=ppo",
        "budget.evaluations=16",
        "logger=wandb",
        "confirm.backends=[]",
    )
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))
    assert list(runs[0].glob("files/media/images/failures*.png"))
    dry = subprocess.run(
        [str(Path(sys.executable).parent / "wandb"), "sync", "--dry-run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **{k: v for k, v in os.environ.items() if k != "WANDB_SILENT"},
            "WANDB_MODE": "offline",
        },
    )
    assert "Would sync 1 run" in dry.stdout + dry.stderr


def test_a_crashing_job_finishes_its_wandb_run(
    digits_run: Path, tmp_path: Path, monkeypatch
) -> None:
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")

    def crash(*args, **kwargs):
        raise RuntimeError("evaluation crashed")

    monkeypatch.setattr("qrl.searching.score_held_out", crash)  # after the search, W&B on
    # PPO: SB3's TensorBoard dir beside qrl's lets W&B finish at once (with one, it waits 10 s).
    with pytest.raises(RuntimeError, match="evaluation crashed"):
        _search(digits_run, tmp_path, "agent=ppo", "budget.evaluations=5", "logger=wandb")
    assert wandb.run is None
    assert not (tmp_path / "metrics.json").exists()
    (log,) = tmp_path.glob("wandb/offline-run-*/logs/debug.log")
    assert "got exitcode: 1" in log.read_text()  # finished, as failed


def test_report_compares_agents_across_seeds(digits_run: Path, tmp_path: Path) -> None:
    for agent in ("random", "es"):
        for seed in (0, 1):
            _search(
                digits_run,
                tmp_path / f"{agent}-{seed}",
                f"agent={agent}",
                f"seed={seed}",
                "budget.evaluations=12",
                "confirm.backends=[]",
            )
    runs = report.collect_runs(tmp_path)
    table = report.compare(runs)
    assert "| es " in table and "| random " in table and "0,1" in table
    assert report.main([str(tmp_path), "--out", str(tmp_path / "report.md")]) == 0
    assert (tmp_path / "report.png").stat().st_size > 0
    assert report.main([str(tmp_path / "empty")]) == 2


# Slow: the same multirun path (a sweep over a key, one job dir each, grouped by qrl.report)
# runs in `make test` through tests/test_sweeps.py.
@pytest.mark.slow
def test_cli_sweep_over_agents(digits_run: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "qrl.search",
            "-m",
            "agent=random,es",
            f"victim.run={digits_run}",
            "budget.evaluations=8",
            "confirm.backends=[]",
            *FAST,
            f"hydra.sweep.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(report.collect_runs(tmp_path)) == 2


def test_search_config_errors_are_clear(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "qrl.search", "agent=dqn", f"hydra.run.dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        "error: unknown agent option 'dqn'; choose one of a2c, es, optuna, ppo, ppo_narrow, "
        "random, sac, sac_narrow, td3 "
        f"(files in {CONF_DIR / 'agent'})"
    )
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("budget.evaluations=1", "budget.evaluations must be >= 2"),
        ("select.fraction=1.5", "select.fraction"),
        ("select.split=holdout", r"select\.split must be one of \['train', 'val', 'test'\]"),
        ("victim.model=vgg", r"victim\.model must be one of \['cnn', 'mlp', 'resnet18'\]"),
    ],
)
def test_selection_settings_are_checked_before_work(
    tmp_path: Path, override: str, message: str
) -> None:
    cfg = load_config("search", [f"out={tmp_path}", override])
    with pytest.raises(ConfigError, match=message):
        search.run(cfg)
    assert not (tmp_path / "config.yaml").exists()


def test_cluster_bootstrap_counts_source_images_not_draws() -> None:
    rng = np.random.default_rng(0)
    per_image = rng.integers(0, 2, 100).astype(float)  # 100 images, each right or wrong
    repeated = np.repeat(per_image, 40)  # drawn 40 times each, as held-out draws reuse images
    clusters = np.repeat(np.arange(100), 40)
    low, high = cluster_bootstrap_ci(repeated, clusters, resamples=2000)
    low1, high1 = cluster_bootstrap_ci(per_image, np.arange(100), resamples=2000)
    naive_low, naive_high = cluster_bootstrap_ci(repeated, np.arange(4000), resamples=2000)
    assert high - low == pytest.approx(high1 - low1, rel=0.15)  # the 100 images decide the width
    assert (naive_high - naive_low) < 0.3 * (
        high - low
    )  # treating draws as independent: ~6x too narrow
