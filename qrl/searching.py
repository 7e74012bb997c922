"""The search as a library: for a ready victim, search, select, evaluate, confirm, write.

Reads top to bottom (`search_victim`): build env and agent, learn (`run_search`) -> choose the
best policy by re-scoring the search's top ones on fresh batches inside the budget
(`search_and_select`, `qrl.selection.select_best`) -> evaluate the chosen policy on held-out
inputs (`evaluate_best`) -> confirm it on real int8 kernels (`confirm_on_kernels`) -> write
results (`search_result`: a `SearchResult`, whose `to_metrics` is `metrics.json`;
`write_results`). `python -m qrl.search` and `qrl.audit` build the victim and call
`search_victim`, which returns the `SearchResult`.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from omegaconf import DictConfig, OmegaConf
from stable_baselines3.common.monitor import Monitor

from qrl.agents import ProgressBar, RecordingWrapper, SearchLog, Trial, run_agent
from qrl.confirm import confirm_on_kernels, kernel_rows
from qrl.devices import follow_device
from qrl.envs import QUANT_FAILURE_ID
from qrl.envs.failure_task import FailureTask
from qrl.errors import ConfigError
from qrl.heldout import HeldOutResult, score_held_out
from qrl.loggers import RunLogger
from qrl.plots import failure_grid, search_curve, write_archive
from qrl.runs import write_metrics
from qrl.scoring import is_valid
from qrl.selection import Selection, distinct_top, reserved_evaluations, select_best
from qrl.specs import checked_number
from qrl.tables import format_table
from qrl.victim import DEFAULT_MODEL, Victim, victim_dir

HELD_OUT_SEED_OFFSET = 10_000  # held-out draws never share a seed with the search batches
SELECT_SEED_OFFSET = 20_000  # nor do the selection's fresh batches


@dataclass(frozen=True)
class SearchResult:
    """What one search found and how the chosen policy held up; `to_metrics` is its
    `metrics.json`.

    The gap is reference - quantized accuracy (the reference is `reference`: the teacher, or
    the full-precision student, where the gap is the drop); the drop is full precision -
    quantized accuracy of the same network. Accuracies and gaps are fractions.

    Attributes:
        best_batch: the search's best single batch (its gap is biased up: the max of noisy
            batches); `best_batch.index` is the evaluation that found it.
        search_evaluations: evaluations the search spent (the selection's come on top).
        selection: the top policies re-scored on fresh batches, and the one chosen.
        held_out: the chosen policy on held-out draws (gap, its interval, drop, accuracies).
        baseline: the data's own distribution (the all-zero action) on the same draws.
        reference: whose accuracy the gap is measured from: `teacher` or `student`.
        valid: the teacher's held-out accuracy is at or above the validity floor.
        ci_level: the intervals' confidence level.
        confirm: the real int8 kernels' `confirm/*` metrics (empty when none ran).
        description: the chosen policy in words.
        archive: the rows of `archive.json`: the search's distinct top policies, best first.
        run_dir: where the run's files are.
        provenance: the keys `qrl.runs.write_metrics` records beside the search's (seed,
            git_sha, wall_time_s, qrl_version); empty until `metrics.json` is written.
    """

    best_batch: Trial
    search_evaluations: int
    selection: Selection
    held_out: HeldOutResult
    baseline: HeldOutResult
    reference: str
    valid: bool
    ci_level: float
    confirm: Mapping[str, Any]
    description: str
    archive: tuple[dict[str, Any], ...]
    run_dir: Path
    provenance: Mapping[str, Any] = field(default_factory=dict)

    @property
    def action(self) -> np.ndarray:
        """The chosen policy: the selection's action (parameters in [-1, 1])."""
        return self.selection.chosen.trial.action

    @property
    def evaluations(self) -> int:
        """The whole budget spent: the search's evaluations and the selection's."""
        return self.search_evaluations + self.selection.evaluations

    def to_metrics(self) -> dict[str, Any]:
        """The `metrics.json` keys: the search, the selection, the held-out result and its
        baseline, the kernels' confirmation, the chosen policy (then any provenance)."""
        best = self.best_batch
        return {
            # The best single search batch: an upward-biased number, shown only as what it is.
            "search/best_batch_gap": best.info["gap"],
            "search/best_batch_reward": best.reward,
            "search/evaluations": self.search_evaluations,
            "search/evaluations_to_best_batch": best.index,
            **self.selection.metrics(),
            "evaluations": self.evaluations,
            **self.held_out.metrics("eval"),
            "eval/reference": self.reference,
            "eval/valid": float(self.valid),
            "eval/ci_level": self.ci_level,
            **self.baseline.metrics("baseline"),
            **self.confirm,
            "policy/description": self.description,
            "policy/action": [float(a) for a in self.action],
            **self.provenance,
        }


def task_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """FailureTask arguments (but the split) from the `space` and `env` config nodes."""
    return {
        "mode": str(cfg.space.mode),
        "corruptions": list(cfg.space.corruptions),
        "class_mix": bool(cfg.space.class_mix),
        "bits_set": list(cfg.bits.set),
        "bits_budget": float(cfg.bits.budget),
        "reference": str(cfg.env.get("reference", "teacher")),
    }


def env_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """QuantFailureEnv arguments (but the split) from the `space` and `env` config nodes."""
    return {
        **task_kwargs(cfg),
        "batch_size": int(cfg.env.batch_size),
        "validity_floor": float(cfg.env.validity_floor),
        "penalty": float(cfg.env.penalty),
    }


def check_settings(cfg: DictConfig) -> None:
    """A `ConfigError` for a budget or held-out settings that cannot run (before any work)."""
    for key in (
        "budget.evaluations",
        "env.batch_size",
        "env.n_envs",
        "eval.samples",
        "eval.bootstrap",
        "archive.top_k",
        "select.candidates",
    ):
        checked_number(OmegaConf.select(cfg, key), key, int, low=1)
    victim_dir(str(OmegaConf.select(cfg, "victim.model", default=DEFAULT_MODEL)))  # a known model
    if int(cfg.budget.evaluations) < 2:
        raise ConfigError(
            f"budget.evaluations must be >= 2 (at least one to search and one to re-score the "
            f"chosen policy on a fresh batch), got {cfg.budget.evaluations}"
        )
    if str(cfg.select.split) not in ("train", "val", "test"):
        raise ConfigError(f"select.split must be train, val or test, got {cfg.select.split!r}")
    if not 0 < checked_number(cfg.select.fraction, "select.fraction", low=0, strict=True) < 1:
        raise ConfigError(
            f"select.fraction (the budget's share spent re-scoring) must be in (0, 1), "
            f"got {cfg.select.fraction}"
        )
    checked_number(cfg.archive.grid, "archive.grid", int, low=0)
    checked_number(cfg.seed, "seed", int, low=0)
    if not 0 < checked_number(cfg.eval.ci_level, "eval.ci_level", low=0, strict=True) < 1:
        raise ConfigError(f"eval.ci_level must be in (0, 1), got {cfg.eval.ci_level}")


def held_out_settings(cfg: DictConfig) -> dict[str, Any]:
    """`score_held_out` keywords from the `eval` node; the draws' seed is the run's, offset."""
    return {
        "samples": int(cfg.eval.samples),
        "seed": int(cfg.seed) + HELD_OUT_SEED_OFFSET,
        "level": float(cfg.eval.ci_level),
        "resamples": int(cfg.eval.bootstrap),
    }


def search_victim(victim: Victim, cfg: DictConfig, out: Path, started: float) -> SearchResult:
    """Search, evaluate, confirm and write results for a ready victim (the CLI and `qrl.audit`).

    Returns the result in memory, with the provenance its `metrics.json` records.
    """
    check_settings(cfg)
    follow_device(cfg.agent, victim.device)  # an SB3 agent with device auto: the victim's
    name = f"search-{cfg.agent.name}-{cfg.space.mode}-s{int(cfg.seed)}"
    # A search does not resume mid-way, so a rerun's logs restart rather than append.
    shutil.rmtree(out / "sb3", ignore_errors=True)
    with RunLogger(out, cfg.logger, config=cfg, name=name, fresh=True) as log:
        # --- build env and agent, learn, then choose among the top policies -------------------
        search_log, selection = search_and_select(victim, cfg, out, log)
        chosen = selection.chosen.trial
        # --- evaluate the chosen policy on held-out inputs ------------------------------------
        held_out = FailureTask(victim, split=str(cfg.eval.split), **task_kwargs(cfg))
        settings = held_out_settings(cfg)
        result, baseline = evaluate_best(held_out, chosen.action, **settings)
        # --- confirm on real int8 kernels (the input-distribution part of the policy) ---------
        confirm = confirm_on_kernels(
            held_out,
            chosen.action,
            backends=[str(b) for b in cfg.confirm.backends],
            onnx_reduce_range=bool(cfg.confirm.get("onnx_reduce_range", False)),
            simulated=(result, baseline),
            **settings,
        )
        # --- write results ---------------------------------------------------------------------
        top = distinct_top(search_log, int(cfg.archive.top_k))
        archive = write_archive(out / "archive.csv", out / "archive.json", top, held_out.describe)
        found = search_result(
            search_log,
            selection,
            held_out,
            (result, baseline),
            confirm,
            archive,
            validity_floor=float(cfg.env.validity_floor),
            ci_level=float(cfg.eval.ci_level),
            run_dir=out,
        )
        write_results(
            log,
            found,
            search_log,
            held_out,
            agent=str(cfg.agent.name),
            run_name=name,
            grid=int(cfg.archive.grid),
        )
    metrics = found.to_metrics()
    record = write_metrics(out, metrics, seed=int(cfg.seed), started=started)  # last: done
    _print_summary(cfg, found)
    return replace(found, provenance={k: v for k, v in record.items() if k not in metrics})


def search_and_select(
    victim: Victim, cfg: DictConfig, out: Path, log: RunLogger
) -> tuple[SearchLog, Selection]:
    """Spend the search's part of the budget, then re-score its top policies on fresh batches
    (the reserved evaluations) and choose the best re-scored one."""
    seed = int(cfg.seed)
    reserve = reserved_evaluations(int(cfg.budget.evaluations), float(cfg.select.fraction))
    search_log = run_search(
        victim,
        cfg.agent,
        env_kwargs(cfg),
        budget=int(cfg.budget.evaluations) - reserve,
        seed=seed,
        split=str(cfg.env.split),
        n_envs=int(cfg.env.n_envs),
        log=log,
        sb3_log_dir=out / "sb3",
        progress=bool(cfg.progress),
    )
    selection = select_best(
        FailureTask(victim, split=str(cfg.select.split), **task_kwargs(cfg)),
        search_log,
        candidates=int(cfg.select.candidates),
        evaluations=reserve,
        batch_size=int(cfg.env.batch_size),
        seed=seed + SELECT_SEED_OFFSET,
        validity_floor=float(cfg.env.validity_floor),
        penalty=float(cfg.env.penalty),
        level=float(cfg.eval.ci_level),
    )
    return search_log, selection


def run_search(
    victim: Victim,
    agent_cfg: DictConfig,
    env_options: dict[str, Any],
    *,
    budget: int,
    seed: int,
    split: str,
    n_envs: int,
    log: RunLogger,
    sb3_log_dir: Path,
    progress: bool,
) -> SearchLog:
    """Run one agent on `qrl/QuantFailure-v0` until it has spent `budget` evaluations.

    Every trial of every agent goes through one `RecordingWrapper` into the returned log,
    and each is logged as `search/*`, `victim/*` and `quant/*` metrics at its index.
    """
    search_log = SearchLog(budget)
    bar = ProgressBar(search_log, f"{agent_cfg.name} search", progress)

    def on_record(trial: Trial, best: Trial) -> None:
        bar(trial, best)
        log.log(
            {
                "search/reward": trial.reward,
                "search/gap": trial.info["gap"],
                "search/best_batch_reward": best.reward,
                "search/best_batch_gap": best.info["gap"],
                "victim/acc_teacher": trial.info["acc_teacher"],
                "victim/acc_q": trial.info["acc_q"],
                "quant/mean_bits": trial.info["mean_bits"],
            },
            step=trial.index,
        )

    search_log.on_record = on_record

    def make_env() -> gym.Env:
        env = gym.make(QUANT_FAILURE_ID, victim=victim, split=split, **env_options)
        return Monitor(RecordingWrapper(env, search_log))

    run_agent(
        agent_cfg,
        make_env,
        search_log,
        seed=seed,
        n_envs=n_envs,
        sb3_log_dir=str(sb3_log_dir),
        callbacks=log.sb3_callbacks(),
    )
    bar.close()
    return search_log


def evaluate_best(
    task: FailureTask, action: np.ndarray, **settings: Any
) -> tuple[HeldOutResult, HeldOutResult]:
    """Score the chosen policy and the data's own distribution on the same held-out draws.

    Returns:
        (the policy's result, the baseline's: the all-zero action). `settings` are the
        keywords of `score_held_out`.
    """
    result = score_held_out(task, action, **settings)
    baseline = score_held_out(task, np.zeros_like(action), **settings)
    return result, baseline


def search_result(
    search_log: SearchLog,
    selection: Selection,
    task: FailureTask,
    scored: tuple[HeldOutResult, HeldOutResult],
    confirm: dict[str, Any],
    archive: list[dict[str, Any]],
    *,
    validity_floor: float,
    ci_level: float,
    run_dir: Path,
) -> SearchResult:
    """The run's result: the search, the selection, the held-out result and its baseline
    (`scored`: the policy's and the data's own distribution's), the kernels' confirmation and
    the archive's rows."""
    best = search_log.best
    assert best is not None
    result, baseline = scored
    return SearchResult(
        best_batch=best,
        search_evaluations=search_log.count,
        selection=selection,
        held_out=result,
        baseline=baseline,
        reference=task.reference,
        valid=is_valid(result.acc_teacher, validity_floor),
        ci_level=ci_level,
        confirm=confirm,
        description=task.describe(selection.chosen.trial.action),
        archive=tuple(archive),
        run_dir=run_dir,
    )


def write_results(
    log: RunLogger,
    found: SearchResult,
    search_log: SearchLog,
    task: FailureTask,
    *,
    agent: str,
    run_name: str,
    grid: int,
) -> None:
    """Write the failure grid and search curve, and log them, the archive and the metrics
    (the archive is written before; `metrics.json` is the caller's, written last)."""
    out, result = found.run_dir, found.held_out
    failure_grid(
        out / "failures.png",
        result.failures,
        task.victim.data.class_names,
        f"{agent}: {found.description}\nheld-out gap {100 * result.gap:.1f} points",
        max_images=grid,
    )
    search_curve(out / "search_curve.png", search_log.trials, f"{agent} search")
    log.summary(found.to_metrics())
    log.log_image("failures", out / "failures.png")
    log.log_artifact(
        f"archive-{run_name}",
        "failure-archive",
        [out / "archive.csv", out / "archive.json", out / "failures.png"],
    )


_REFERENCE_NAMES = {
    "teacher": "teacher - quantized",
    "student": "full precision - quantized (the drop)",
}


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def _summary_rows(
    cfg: DictConfig, metrics: dict[str, Any], result: HeldOutResult
) -> list[list[str]]:
    """The summary table's rows: what the search found, what was chosen, what held out."""
    pct, level = _pct, f"{int(100 * cfg.eval.ci_level)}% CI"
    return [
        [
            "search: best single-batch gap (biased up)",
            pct(metrics["search/best_batch_gap"]),
            f"at evaluation {metrics['search/evaluations_to_best_batch']}",
        ],
        [
            "evaluations: search + selection",
            f"{metrics['search/evaluations']} + {metrics['select/evaluations']}",
            "",
        ],
        [
            f"chosen policy: re-scored gap, fresh {cfg.select.split} batches",
            pct(metrics["select/gap"]),
            f"[{pct(metrics['select/gap_ci_low'])}, {pct(metrics['select/gap_ci_high'])}] {level}",
        ],
        [
            f"chosen policy: held-out gap, {_REFERENCE_NAMES[metrics['eval/reference']]}",
            pct(result.gap),
            f"[{pct(result.ci[0])}, {pct(result.ci[1])}] {level}"
            + ("" if metrics["eval/valid"] else ", teacher below the validity floor"),
        ],
        ["held-out gap, data's own distribution", pct(metrics["baseline/gap"]), ""],
        ["held-out drop, full-precision student - quantized", pct(result.drop_fp), ""],
        ["held-out teacher gap, teacher - quantized", pct(metrics["eval/teacher_gap"]), ""],
        [
            "held-out acc: teacher / quantized",
            f"{pct(result.acc_teacher)} / {pct(result.acc_q)}",
            "",
        ],
        *kernel_rows(metrics),
    ]


def _print_summary(cfg: DictConfig, found: SearchResult) -> None:
    metrics, archive, out = found.to_metrics(), found.archive, found.run_dir
    rows = _summary_rows(cfg, metrics, found.held_out)
    print(format_table([f"{cfg.agent.name} / space={cfg.space.mode}", "points", ""], rows))
    for message in metrics.get("confirm/warnings", []):
        print(f"warning: {message}")
    print(f"chosen policy: {metrics['policy/description']}")
    top = [
        [
            r["rank"],
            r["evaluation"],
            _pct(r.get("gap", 0)),
            _pct(r.get("acc_teacher", 0)),
            _pct(r.get("acc_q", 0)),
            r["policy"][:70],
        ]
        for r in archive[:5]
    ]
    headers = ["rank", "eval #", "batch gap", "acc T", "acc Q", "policy (search order)"]
    print(format_table(headers, top))
    print(f"wrote {out}/archive.csv, failures.png, search_curve.png, metrics.json")
