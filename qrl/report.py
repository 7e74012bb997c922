"""Run dirs to tables and pictures: failure archives, failure grids, search curves, and the
comparison of agents across seeds.

    python -m qrl.report multirun/search/2026-11-28_12-00-00 [--by agent] [--out report.md]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import textwrap
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from torch import Tensor

from qrl.agents import Trial
from qrl.runs import CONFIG_FILE, METRICS_FILE, atomic_write
from qrl.scoring import accuracy_drop
from qrl.tables import format_table


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    plt = _pyplot()
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
    plt = _pyplot()
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


# --- comparing finished runs ---------------------------------------------------------------


def collect_runs(root: str | Path) -> list[dict[str, Any]]:
    """Every finished run under `root` (dirs with `metrics.json`), with its config."""
    runs = []
    for metrics_path in sorted(Path(root).rglob(METRICS_FILE)):
        run_dir = metrics_path.parent
        record: dict[str, Any] = {"run_dir": str(run_dir), **json.loads(metrics_path.read_text())}
        if (run_dir / CONFIG_FILE).is_file():
            record["config"] = OmegaConf.to_container(OmegaConf.load(run_dir / CONFIG_FILE))
        if "eval/drop_fp" not in record and {"eval/acc_fp", "eval/acc_q"} <= set(record):
            # Runs from before drop_fp was recorded: the same number from their accuracies.
            record["eval/drop_fp"] = accuracy_drop(record["eval/acc_fp"], record["eval/acc_q"])
        runs.append(record)
    return runs


def _lookup(record: dict[str, Any], dotted: str) -> Any:
    node: Any = record.get("config", {})
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    digits = 0 if all(float(v).is_integer() for v in values) else 3
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def compare(
    runs: list[dict[str, Any]],
    by: str = "agent.name",
    keys: Sequence[str] = (
        "eval/gap",
        "eval/drop_fp",
        "select/gap",
        "search/best_batch_gap",
        "search/evaluations_to_best_batch",
        "confirm/gap",
    ),
    markdown: bool = True,
) -> str:
    """One row per value of `by` (a dotted config key): mean ± std over seeds of each metric."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        groups[str(_lookup(r, by))].append(r)
    header = [by.split(".")[0], "seeds", *keys]
    rows = []
    for name, members in sorted(groups.items()):
        members.sort(key=lambda m: int(m.get("seed", 0)))
        row: list[Any] = [name, ",".join(str(m.get("seed")) for m in members)]
        for key in keys:
            row.append(_mean_std([float(m[key]) for m in members if key in m]))
        rows.append(row)
    return format_table(header, rows, markdown=markdown)


def per_seed(runs: list[dict[str, Any]], by: str = "agent.name", key: str = "eval/gap") -> str:
    """A table of `key` for every (group, seed), for reading the spread by eye."""
    seeds = sorted({int(r.get("seed", 0)) for r in runs})
    groups: dict[str, dict[int, float]] = defaultdict(dict)
    for r in runs:
        if key in r:
            groups[str(_lookup(r, by))][int(r.get("seed", 0))] = float(r[key])
    rows = [
        [g, *(f"{vals[s]:.3f}" if s in vals else "-" for s in seeds)]
        for g, vals in sorted(groups.items())
    ]
    return format_table([by.split(".")[0], *(f"seed {s}" for s in seeds)], rows, markdown=True)


def compare_plot(
    path: Path, runs: list[dict[str, Any]], by: str = "agent.name", key: str = "eval/gap"
) -> Path:
    """Each run's `key` as a dot, grouped by `by`, with the group means as bars."""
    plt = _pyplot()
    groups: dict[str, list[float]] = defaultdict(list)
    for r in runs:
        if key in r:
            groups[str(_lookup(r, by))].append(100 * float(r[key]))
    names = sorted(groups)
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 3.5))
    ax.bar(names, [statistics.mean(groups[n]) for n in names], alpha=0.4)
    for i, n in enumerate(names):
        ax.plot([i] * len(groups[n]), groups[n], "ko", ms=4)
    ax.set(ylabel=f"{key} (points)", title=f"{key} by {by} (dots: seeds)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compare finished qrl runs across seeds.")
    parser.add_argument("root", help="a folder holding run dirs (e.g. a Hydra multirun dir)")
    parser.add_argument("--by", default="agent.name", help="dotted config key to group by")
    parser.add_argument("--out", help="also write the tables (markdown) and a plot here")
    args = parser.parse_args(argv)
    runs = collect_runs(args.root)
    if not runs:
        print(f"error: no finished runs (metrics.json) under {args.root}", file=sys.stderr)
        return 2
    text = compare(runs, by=args.by) + "\n\neval/gap per seed:\n\n" + per_seed(runs, by=args.by)
    print(text)
    if args.out:
        out = Path(args.out)
        atomic_write(out, lambda tmp: tmp.write_text(text + "\n"))
        compare_plot(out.with_suffix(".png"), runs, by=args.by)
        print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
