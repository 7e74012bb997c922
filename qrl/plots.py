"""Pictures and archives of one run: a search's archive and curve, grids of failing inputs.

Comparisons across runs live in `qrl.report`; every figure is written atomically.
"""

from __future__ import annotations

import csv
import json
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from qrl.agents import Trial
from qrl.runs import atomic_write


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (files only: no screen is needed)."""
    import logging

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Bar labels such as "2" or "4.0" are meant as categories; matplotlib's INFO line saying so
    # would reach the console through Hydra's logging at every plot.
    logging.getLogger("matplotlib.category").setLevel(logging.WARNING)
    return plt


def write_archive(
    path_csv: Path, path_json: Path, top: Sequence[Trial], describe: Any
) -> list[dict[str, Any]]:
    """Write the top policies of a search (CSV and JSON); returns the rows.

    The `evaluation` column is the trial's index: how much of the budget had been spent.
    """
    rows = [
        {
            "rank": rank,
            "evaluation": trial.index,
            "reward": round(trial.reward, 6),
            **{k: round(v, 6) for k, v in trial.info.items()},
            "policy": describe(trial.action),
            "action": [round(float(a), 6) for a in trial.action],
        }
        for rank, trial in enumerate(top, start=1)
    ]
    text = json.dumps(rows, indent=2) + "\n"
    atomic_write(path_json, lambda tmp: tmp.write_text(text))

    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["rank"])
            writer.writeheader()
            for row in rows:
                writer.writerow({**row, "action": json.dumps(row["action"])})

    atomic_write(path_csv, write_csv)
    return rows


def failure_grid(
    path: Path,
    failures: tuple[Tensor, Tensor, Tensor],
    class_names: Sequence[str],
    title: str,
    max_images: int = 32,
) -> Path:
    """A grid of inputs the quantized student gets wrong and the teacher right (label T, pred Q)."""
    plt = pyplot()
    x, y, pred = (t[:max_images] for t in failures)
    n = len(x)
    cols = min(8, max(n, 1))
    rows = max(1, (n + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.6 * rows + 0.5), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = x[i].permute(1, 2, 0).numpy()
        ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"T:{class_names[int(y[i])]} Q:{class_names[int(pred[i])]}", fontsize=7)
    if n == 0:
        axes.flat[0].text(0.5, 0.5, "no failures found", ha="center", va="center")
    lines = [wrapped for line in title.splitlines() for wrapped in textwrap.wrap(line, 22 * cols)]
    fig.suptitle("\n".join(lines), fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def search_curve(path: Path, trials: Sequence[Trial], title: str) -> Path:
    """Reward of every trial and the best so far, against evaluations spent."""
    plt = pyplot()
    rewards = np.array([t.reward for t in trials])
    gaps = np.array([t.info.get("gap", np.nan) for t in trials])
    steps = np.arange(1, len(rewards) + 1)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, rewards, ".", ms=2, alpha=0.4, label="reward of each evaluation")
    ax.plot(steps, np.maximum.accumulate(rewards), "-", label="best reward so far")
    ax.plot(steps, gaps, ".", ms=2, alpha=0.3, label="gap of each evaluation")
    ax.set(xlabel="evaluations", ylabel="reward / gap (fraction)", title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path
