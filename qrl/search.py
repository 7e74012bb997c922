"""Search for the policies under which a dynamically quantized network fails.

    python -m qrl.search agent=ppo space=input quant=int4_dynamic budget.evaluations=1000
    python -m qrl.search -m agent=ppo,sac,es,random seed=0,1,2     # agents vs random, over seeds

Reads top to bottom: build victim (`run`) -> build env and agent, learn (`run_search`) ->
evaluate the best policy on held-out inputs (`evaluate_best`) -> confirm it on real int8
kernels (`confirm_on_kernels`) -> write results (`write_results`). The run dir gets
`archive.csv`/`archive.json` (top-k policies), `failures.png` (inputs the quantized student gets
wrong and the teacher right), `search_curve.png`, `log.csv`, `tb/`, `sb3/` and, last,
`metrics.json`.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import gymnasium as gym
import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf
from stable_baselines3.common.monitor import Monitor
from torch import nn

from qrl.agents import ProgressBar, RecordingWrapper, SearchLog, Trial, run_agent
from qrl.cli import checked_options, hydra_task
from qrl.config import CONF_DIR, checked_number
from qrl.devices import follow_device, task_device
from qrl.envs import QUANT_FAILURE_ID
from qrl.envs.failure_task import FailureTask
from qrl.errors import ConfigError
from qrl.heldout import HeldOutResult, score_held_out
from qrl.loggers import RunLogger
from qrl.quant import as_quant_config
from qrl.quant.backends import real_backend
from qrl.report import failure_grid, search_curve, write_archive
from qrl.runs import start_run, write_metrics
from qrl.tables import format_table
from qrl.victim import Victim, default_victim, load_victim

HELD_OUT_SEED_OFFSET = 10_000  # held-out draws never share a seed with the search batches


def task_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """FailureTask arguments (but the split) from the `space` and `env` config nodes."""
    return {
        "mode": str(cfg.space.mode),
        "corruptions": list(cfg.space.corruptions),
        "class_mix": bool(cfg.space.class_mix),
        "bits_set": list(cfg.space.bits_set),
        "bits_budget": float(cfg.space.bits_budget),
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
    ):
        checked_number(OmegaConf.select(cfg, key), key, int, low=1)
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


def search_victim(victim: Victim, cfg: DictConfig, out: Path, started: float) -> dict[str, Any]:
    """Search, evaluate, confirm and write results for a ready victim (the CLI and `qrl.audit`)."""
    check_settings(cfg)
    follow_device(cfg.agent, victim.device)  # an SB3 agent with device auto: the victim's
    seed = int(cfg.seed)
    name = f"search-{cfg.agent.name}-{cfg.space.mode}-s{seed}"
    options = env_kwargs(cfg)
    # A search does not resume mid-way, so a rerun's logs restart rather than append.
    shutil.rmtree(out / "sb3", ignore_errors=True)
    with RunLogger(out, cfg.logger, config=cfg, name=name, fresh=True) as log:
        # --- build env and agent, learn until the budget of evaluations is spent -------------
        search_log = run_search(
            victim,
            cfg.agent,
            options,
            budget=int(cfg.budget.evaluations),
            seed=seed,
            split=str(cfg.env.split),
            n_envs=int(cfg.env.n_envs),
            log=log,
            sb3_log_dir=out / "sb3",
            progress=bool(cfg.progress),
        )
        best = search_log.best
        assert best is not None  # the budget is at least one evaluation

        # --- evaluate the best policy on held-out inputs --------------------------------------
        held_out = FailureTask(victim, split=str(cfg.eval.split), **task_kwargs(cfg))
        settings = held_out_settings(cfg)
        result, baseline = evaluate_best(held_out, best.action, **settings)

        # --- confirm on real int8 kernels (the input-distribution part of the policy) ---------
        confirm = confirm_on_kernels(
            held_out,
            best.action,
            backends=[str(b) for b in cfg.confirm.backends],
            onnx_reduce_range=bool(cfg.confirm.get("onnx_reduce_range", False)),
            **settings,
        )

        # --- write results ---------------------------------------------------------------------
        metrics, archive = write_results(
            out,
            log,
            search_log,
            held_out,
            result,
            baseline,
            confirm,
            agent=str(cfg.agent.name),
            run_name=name,
            ci_level=float(cfg.eval.ci_level),
            top_k=int(cfg.archive.top_k),
            grid=int(cfg.archive.grid),
        )
    record = write_metrics(out, metrics, seed=seed, started=started)  # last: the run is done
    _print_summary(cfg, metrics, archive, result, out)
    return record


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
                "search/best_reward": best.reward,
                "search/best_gap": best.info["gap"],
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
    """Score the best policy and the data's own distribution on the same held-out draws.

    Returns:
        (the policy's result, the baseline's: the all-zero action). `settings` are the
        keywords of `score_held_out`.
    """
    result = score_held_out(task, action, **settings)
    baseline = score_held_out(task, np.zeros_like(action), **settings)
    return result, baseline


def confirm_on_kernels(
    task: FailureTask,
    action: np.ndarray,
    *,
    backends: list[str],
    onnx_reduce_range: bool = False,
    **settings: Any,
) -> dict[str, Any]:
    """Re-evaluate the policy's input distribution on real int8 backends; `confirm/*` metrics.

    Bit-width actions have no meaning on 8-bit kernels and are dropped; torch.ao runs only
    for students made of Linear layers (it leaves convolutions in float). `confirm/gap` is the
    first backend's gap.

    Args:
        task: the held-out task of the simulated victim; each backend gets a copy in mode
            `input` on the same split, with the same reference.
        action: the policy's action in the task's space.
        backends: names of real backends (`onnxruntime`, `torch_ao`).
        onnx_reduce_range: 7-bit ONNX Runtime weights.
        **settings: the keywords of `score_held_out` (the same draws as the simulator's).
    """
    victim = task.victim
    input_part, _ = task.split_action(action)
    if input_part is None or not isinstance(victim.student, nn.Module):
        return {}
    modules = list(victim.student.modules())
    linear_only = any(isinstance(m, nn.Linear) for m in modules) and not any(
        isinstance(m, nn.Conv2d) for m in modules
    )
    metrics: dict[str, Any] = {}
    for name in backends:
        if name == victim.quant.backend or (name == "torch_ao" and not linear_only):
            continue
        backend = real_backend(
            name, victim.student, victim.data.test.head(8), onnx_reduce_range=onnx_reduce_range
        )
        real = task.replace(victim=dataclasses.replace(victim, qstudent=backend), mode="input")
        res = score_held_out(real, input_part, **settings)
        metrics.update(res.metrics(f"confirm/{name}"))
        if "confirm/gap" not in metrics:
            metrics["confirm/gap"] = res.gap
            metrics["confirm/backend"] = name
    return metrics


def write_results(
    out: Path,
    log: RunLogger,
    search_log: SearchLog,
    task: FailureTask,
    result: HeldOutResult,
    baseline: HeldOutResult,
    confirm: dict[str, Any],
    *,
    agent: str,
    run_name: str,
    ci_level: float,
    top_k: int,
    grid: int,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Write the archive, failure grid and search curve, and log them with the metrics.

    Returns:
        (the run's metrics, for the `metrics.json` the caller writes last; the archive's rows).
    """
    best = search_log.best
    assert best is not None
    description = task.describe(best.action)
    archive = write_archive(
        out / "archive.csv", out / "archive.json", search_log.top(top_k), task.describe
    )
    failure_grid(
        out / "failures.png",
        result.failures,
        task.victim.data.class_names,
        f"{agent}: {description}\nheld-out gap {100 * result.gap:.1f} points",
        max_images=grid,
    )
    search_curve(out / "search_curve.png", search_log.trials, f"{agent} search")
    metrics: dict[str, Any] = {
        "search/best_gap": best.info["gap"],
        "search/best_reward": best.reward,
        "search/evaluations": search_log.count,
        "search/evaluations_to_best": best.index,
        **result.metrics("eval"),
        "eval/ci_level": ci_level,
        **{k.replace("eval/", "baseline/"): v for k, v in baseline.metrics("eval").items()},
        **confirm,
        "policy/description": description,
        "policy/action": [float(a) for a in best.action],
    }
    log.summary(metrics)
    log.log_image("failures", out / "failures.png")
    log.log_artifact(
        f"archive-{run_name}",
        "failure-archive",
        [out / "archive.csv", out / "archive.json", out / "failures.png"],
    )
    return metrics, archive


def _print_summary(
    cfg: DictConfig,
    metrics: dict[str, Any],
    archive: list[dict[str, Any]],
    result: HeldOutResult,
    out: Path,
) -> None:
    pct = lambda v: f"{100 * v:.2f}"  # noqa: E731
    rows = [
        ["search: best gap on search batches", pct(metrics["search/best_gap"]), ""],
        [
            "search: evaluations (to best)",
            str(metrics["search/evaluations"]),
            str(metrics["search/evaluations_to_best"]),
        ],
        [
            "held-out gap, best policy",
            pct(result.gap),
            f"[{pct(result.ci[0])}, {pct(result.ci[1])}] {int(100 * cfg.eval.ci_level)}% CI",
        ],
        ["held-out gap, data's own distribution", pct(metrics["baseline/gap"]), ""],
        ["held-out drop, full-precision student - quantized", pct(result.drop_fp), ""],
        [
            "held-out acc: teacher / quantized",
            f"{pct(result.acc_teacher)} / {pct(result.acc_q)}",
            "",
        ],
    ]
    if "confirm/gap" in metrics:
        rows.append(
            [f"confirmed gap on {metrics['confirm/backend']} int8", pct(metrics["confirm/gap"]), ""]
        )
    print(format_table([f"{cfg.agent.name} / space={cfg.space.mode}", "points", ""], rows))
    print(f"best policy: {metrics['policy/description']}")
    print(
        format_table(
            ["rank", "eval #", "gap", "acc T", "acc Q", "policy"],
            [
                [
                    r["rank"],
                    r["evaluation"],
                    pct(r.get("gap", 0)),
                    pct(r.get("acc_teacher", 0)),
                    pct(r.get("acc_q", 0)),
                    r["policy"][:70],
                ]
                for r in archive[:5]
            ],
        )
    )
    print(f"wrote {out}/archive.csv, failures.png, search_curve.png, metrics.json")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Build the victim named by the config and search it; returns the metrics."""
    check_settings(cfg)  # before the run dir is touched, as is the victim
    device = task_device(cfg)  # device=cuda without a GPU: one clear error, nothing written
    # --- build victim -------------------------------------------------------------------------
    quant = as_quant_config(cfg.quant)
    if cfg.victim.run:
        victim = load_victim(cfg.victim.run, quant, device)
    else:
        victim = default_victim(quant, device=device)
    out, started = start_run(cfg)
    return search_victim(victim, cfg, out, started)


@checked_options
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="search")
def main(cfg: DictConfig) -> float:
    """The search as a Hydra app; returns `eval/gap`, the objective of `+sweep=tune_ppo`."""
    return float(hydra_task(run, cfg)["eval/gap"])


if __name__ == "__main__":
    main()
