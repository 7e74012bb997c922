"""Stage A: train (or load) a teacher, then distil a white-box student from its logits alone.

    python -m qrl.distill data=digits seed=0 hydra.run.dir=runs/distill

The run dir receives `teacher.pt`, `student.pt`, `log.csv`, `tb/` and, last, `metrics.json`.
Re-running into the same dir resumes: finished phases are loaded, an interrupted phase continues
from its last epoch (`*.state.pt`).
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from qrl.cli import checked_options, hydra_task
from qrl.config import CONF_DIR, checked_number, instantiate
from qrl.data import ImageData
from qrl.distillation import DistillRecipe, distil, distil_student, kd_loss, train_teacher
from qrl.distillation import load_teacher as _load_teacher
from qrl.loggers import RunLogger
from qrl.runs import start_run, write_metrics
from qrl.sweeps import task_device
from qrl.tables import format_table

__all__ = ["distil_student", "kd_loss", "main", "run", "train_teacher"]


def check_config(cfg: DictConfig) -> tuple[DistillRecipe, int]:
    """The recipe and the seed, or one `ConfigError` naming the value that cannot train."""
    return DistillRecipe.from_config(cfg), checked_number(cfg.seed, "seed", int, low=0)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train or load the teacher, distil the student, evaluate both; returns the metrics."""
    # --- every value and input checked before the run dir is touched ---------------------------
    recipe, seed = check_config(cfg)
    device = task_device(cfg)
    data: ImageData = instantiate(cfg.data)
    if recipe.teacher_path:
        _load_teacher(recipe.teacher_path, data)  # refused before anything is written
    out, started = start_run(cfg)
    print(data.describe() + ("" if device.type == "cpu" else f" (on {device})"))
    with RunLogger(out, cfg.logger, config=cfg, name=f"distill-{data.name}-s{seed}") as log:
        done = distil(
            recipe,
            data,
            out,
            seed=seed,
            resume=bool(cfg.resume),
            log=log,
            progress=bool(cfg.progress),
            device=device,
        )
        log.summary(done.metrics)
    record = write_metrics(out, done.metrics, seed=seed, started=started)
    m = done.metrics
    print(
        format_table(
            ["model", "source", "params", "test acc", "agreement"],
            [
                [
                    "teacher",
                    done.sources["teacher"],
                    m["teacher/params"],
                    f"{m['teacher/acc']:.4f}",
                    "-",
                ],
                [
                    "student",
                    done.sources["student"],
                    m["student/params"],
                    f"{m['student/acc']:.4f}",
                    f"{m['student/agreement']:.4f}",
                ],
            ],
        )
    )
    print(f"wrote {out}/teacher.pt, student.pt, metrics.json ({record['wall_time_s']:.1f} s)")
    return record


@checked_options
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="distill")
def main(cfg: DictConfig) -> None:
    hydra_task(run, cfg)


if __name__ == "__main__":
    main()
