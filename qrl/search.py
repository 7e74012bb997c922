"""Search for the policies under which a dynamically quantized network fails.

    python -m qrl.search agent=ppo policy=input quant=int4_dynamic budget.evaluations=1000
    python -m qrl.search -m agent=ppo,sac,es,random seed=0,1,2     # agents vs random, over seeds

Reads top to bottom: build victim -> build env -> build agent -> learn -> evaluate the best
policy on held-out inputs -> confirm it on real int8 kernels -> write results. The run dir gets
`archive.csv`/`archive.json` (top-k policies), `failures.png` (inputs the quantized student gets
wrong and the teacher right), `search_curve.png`, `log.csv`, `tb/`, `sb3/` and, last,
`metrics.json`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import gymnasium as gym
import hydra
import numpy as np
from omegaconf import DictConfig
from stable_baselines3.common.monitor import Monitor
from torch import nn

from qrl.agents import Evaluation, ProgressBar, RecordingWrapper, SearchLog, run_agent
from qrl.cli import hydra_task
from qrl.envs import QUANT_FAILURE_ID
from qrl.envs.failure_task import FailureTask
from qrl.errors import ConfigError
from qrl.evaluation import HeldOutResult, evaluate_policy
from qrl.loggers import RunLogger
from qrl.quant import as_quant_config
from qrl.quant.backends import real_backend
from qrl.report import failure_grid, search_curve, write_archive
from qrl.runs import start_run, write_metrics
from qrl.tables import format_table
from qrl.victim import Victim, default_victim, load_victim

HELD_OUT_SEED_OFFSET = 10_000  # held-out draws never share a seed with the search batches


def task_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """FailureTask arguments (but the split) from the `policy` and `env` config nodes."""
    return {
        "mode": str(cfg.policy.mode),
        "corruptions": list(cfg.policy.corruptions),
        "class_mix": bool(cfg.policy.class_mix),
        "bits_set": list(cfg.policy.bits_set),
        "bits_budget": float(cfg.policy.bits_budget),
        "reference": str(cfg.env.get("reference", "teacher")),
    }


def env_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """QuantFailureEnv arguments (but the split) from the `policy` and `env` config nodes."""
    return {
        **task_kwargs(cfg),
        "batch_size": int(cfg.env.batch_size),
        "validity_floor": float(cfg.env.validity_floor),
        "penalty": float(cfg.env.penalty),
    }


def search_victim(victim: Victim, cfg: DictConfig, out: Path, started: float) -> dict[str, Any]:
    """Search, evaluate, confirm and write results for a ready victim (the CLI and `qrl.audit`)."""
    seed = int(cfg.seed)
    budget = int(cfg.budget.evaluations)
    if budget < 1:
        raise ConfigError(f"budget.evaluations must be >= 1, got {budget}")
    if int(cfg.eval.samples) < 1 or int(cfg.eval.bootstrap) < 1 or not 0 < cfg.eval.ci_level < 1:
        raise ConfigError(
            "eval.samples and eval.bootstrap must be >= 1 and eval.ci_level in (0, 1)"
        )
    kwargs = env_kwargs(cfg)
    name = f"search-{cfg.agent.name}-{cfg.policy.mode}-s{seed}"
    with RunLogger(out, cfg.logger, config=cfg, name=name) as log:
        # --- build env: every evaluation of every agent goes through one recorder ------------
        search_log = SearchLog(budget)
        bar = ProgressBar(search_log, f"{cfg.agent.name} search", bool(cfg.progress))

        def on_record(ev: Evaluation, best: Evaluation) -> None:
            bar(ev, best)
            log.log(
                {
                    "search/reward": ev.reward,
                    "search/gap": ev.info["gap"],
                    "search/best_reward": best.reward,
                    "search/best_gap": best.info["gap"],
                    "victim/acc_teacher": ev.info["acc_teacher"],
                    "victim/acc_q": ev.info["acc_q"],
                    "quant/mean_bits": ev.info["mean_bits"],
                },
                step=ev.index,
            )

        search_log.on_record = on_record

        def make_env() -> gym.Env:
            env = gym.make(QUANT_FAILURE_ID, victim=victim, split=str(cfg.env.split), **kwargs)
            return Monitor(RecordingWrapper(env, search_log))

        # --- build agent and learn, until the budget of evaluations is spent ----------------
        run_agent(
            cfg.agent,
            make_env,
            search_log,
            seed=seed,
            n_envs=int(cfg.env.n_envs),
            sb3_log_dir=str(out / "sb3"),
            callbacks=log.sb3_callbacks(),
        )
        bar.close()
        best = search_log.best
        assert best is not None

        # --- evaluate the best policy on held-out inputs -------------------------------------
        heldout = FailureTask(victim, split=str(cfg.eval.split), **task_kwargs(cfg))
        evaluate = dict(
            samples=int(cfg.eval.samples),
            seed=seed + HELD_OUT_SEED_OFFSET,
            level=float(cfg.eval.ci_level),
            resamples=int(cfg.eval.bootstrap),
        )
        result = evaluate_policy(heldout, best.action, **evaluate)  # type: ignore[arg-type]
        baseline = evaluate_policy(heldout, np.zeros_like(best.action), **evaluate)  # type: ignore[arg-type]

        # --- confirm on real int8 kernels (the input-distribution part of the policy) --------
        confirm = confirm_on_kernels(heldout, best.action, cfg, evaluate)

        # --- write results --------------------------------------------------------------------
        description = heldout.describe(best.action)
        archive = write_archive(
            out / "archive.csv",
            out / "archive.json",
            search_log.top(int(cfg.archive.top_k)),
            heldout.describe,
        )
        failure_grid(
            out / "failures.png",
            result.failures,
            victim.data.class_names,
            f"{cfg.agent.name}: {description}\nheld-out gap {100 * result.gap:.1f} points",
            max_images=int(cfg.archive.grid),
        )
        search_curve(out / "search_curve.png", search_log.evaluations, f"{cfg.agent.name} search")
        metrics: dict[str, Any] = {
            "search/best_gap": best.info["gap"],
            "search/best_reward": best.reward,
            "search/evaluations": search_log.count,
            "search/evaluations_to_best": best.index,
            **result.metrics("eval"),
            "eval/ci_level": float(cfg.eval.ci_level),
            **{k.replace("eval/", "baseline/"): v for k, v in baseline.metrics("eval").items()},
            **confirm,
            "policy/description": description,
            "policy/action": [float(a) for a in best.action],
        }
        log.summary(metrics)
        log.log_image("failures", out / "failures.png")
        log.log_artifact(
            f"archive-{name}",
            "failure-archive",
            [out / "archive.csv", out / "archive.json", out / "failures.png"],
        )
    record = write_metrics(out, metrics, seed=seed, started=started)
    _print_summary(cfg, metrics, archive, result, out)
    return record


def confirm_on_kernels(
    task: FailureTask, action: np.ndarray, cfg: DictConfig, evaluate: dict
) -> dict[str, Any]:
    """Re-evaluate the policy's input distribution on real int8 backends; `confirm/*` metrics.

    Bit-width actions have no meaning on 8-bit kernels and are dropped; torch.ao runs only
    for students made of Linear layers (it leaves convolutions in float).
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
    for name in cfg.confirm.backends:
        if name == victim.quant.backend or (name == "torch_ao" and not linear_only):
            continue
        backend = real_backend(
            str(name),
            victim.student,
            victim.data.test.x[:8],
            onnx_reduce_range=bool(cfg.confirm.get("onnx_reduce_range", False)),
        )
        real = task.replace(victim=dataclasses.replace(victim, qstudent=backend), mode="input")
        res: HeldOutResult = evaluate_policy(real, input_part, **evaluate)
        for key, value in res.metrics(f"confirm/{name}").items():
            metrics[key] = value
        if "confirm/gap" not in metrics:
            metrics["confirm/gap"] = res.gap
            metrics["confirm/backend"] = name
    return metrics


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
    print(format_table([f"{cfg.agent.name} / policy={cfg.policy.mode}", "points", ""], rows))
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
    out, started = start_run(cfg)
    # --- build victim -------------------------------------------------------------------------
    quant = as_quant_config(cfg.quant)
    victim = load_victim(cfg.victim.run, quant) if cfg.victim.run else default_victim(quant)
    return search_victim(victim, cfg, out, started)


@hydra.main(version_base="1.3", config_path="../conf", config_name="search")
def main(cfg: DictConfig) -> None:
    hydra_task(run, cfg)


if __name__ == "__main__":
    main()
