"""Sweeps' run dirs to tables and pictures: the comparison of runs across seeds.

    python -m qrl.report multirun/search/2026-11-28_12-00-00 [more dirs] [--out report.md]

Runs are grouped by every key their sweep varied (each job's `overrides.yaml`, and the configs
themselves, so runs that differ in anything but the seed are never pooled); each group gets
n, mean ± std and a bootstrap interval over seeds. Failed and unfinished runs are listed, not
averaged. `--out report.md` also writes `report.csv` and `report.png`.

The metrics default to those of the runs' task (`task:` in each run's config.yaml): for pairs
the drop and the accuracies, for searches the gap and the drop (`TASK_METRICS`); `--metric`
names others. Tables print accuracies in % and drops and gaps in percentage points, and say
under each table what every column is; the CSV keeps fractions, as the runs' files do.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from qrl.plots import pyplot
from qrl.runs import CONFIG_FILE, METRICS_FILE, atomic_write, flatten
from qrl.scoring import accuracy_drop
from qrl.stats import mean_ci
from qrl.sweeps import FAILURE_FILE, OVERRIDES_FILE, read_failure, read_overrides
from qrl.tables import format_table

# --- comparing runs of sweeps ------------------------------------------------------------

# What a search (or an audit) is about: its held-out gap (from the reference it names in
# `eval/reference`) and drop, then the selection, the search's own best batch and the kernels.
DEFAULT_METRICS = (
    "eval/gap",
    "eval/drop_fp",
    "select/gap",
    "search/best_batch_gap",
    "search/evaluations_to_best_batch",
    "confirm/gap",
)
# Each task's default metrics (its config.yaml's `task:`), the one shown per seed first.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "search": DEFAULT_METRICS,
    "audit": DEFAULT_METRICS,
    "pairs": ("drop", "acc_fp", "acc_q", "mean_bits"),
    "distill": ("student/acc", "teacher/acc", "student/agreement"),
}
# What each default metric is; `{reference}` is whose accuracy a search's gaps start from.
MEANINGS = {
    "drop": "drop = the network's own full-precision accuracy minus its accuracy quantized "
    "under its own policy",
    "acc_fp": "the network's full-precision accuracy",
    "acc_q": "its accuracy quantized under its own policy",
    "mean_bits": "the mean activation bits its policy gives (bits, per layer and input)",
    "eval/gap": "gap = {reference} minus the quantized model's accuracy, held out, under the "
    "chosen policy",
    "eval/drop_fp": "drop = the model's own full-precision accuracy minus its quantized "
    "accuracy, held out, under the chosen policy",
    "select/gap": "gap = {reference} minus quantized, the chosen policy re-scored on fresh "
    "validation batches",
    "search/best_batch_gap": "gap = {reference} minus quantized on the best single search "
    "batch (biased upward)",
    "search/evaluations_to_best_batch": "evaluations until the best search batch (a count)",
    "confirm/gap": "gap = {reference} minus the real int8 kernel's accuracy, held out",
    "student/acc": "the distilled student's test accuracy",
    "teacher/acc": "the teacher's test accuracy",
    "student/agreement": "how often the student's prediction is the teacher's",
}
_FRACTION = re.compile(r"(^|[/_])(acc|accuracy|agreement|gap|drop)(_|$)")
_POINTS = re.compile(r"(^|[/_])(gap|drop)(_|$)")
# Keys that never tell runs apart for a table: the replicate axis, where outputs go, and keys
# that cannot change results (qrl.runs.NON_RESULT_KEYS).
_NOT_A_GROUP = frozenset({"seed", "out", "progress", "overwrite", "resume", "logger", "device"})


def _job_dirs(root: Path) -> list[Path]:
    """Run dirs under `root`: Hydra jobs (overrides/failure files) or, for runs made without
    Hydra, dirs holding `metrics.json`. Stage runs nested inside a job are not jobs."""
    marked = {p.parent for name in (OVERRIDES_FILE, FAILURE_FILE) for p in root.rglob(name)}
    if not marked:
        return sorted({p.parent for p in root.rglob(METRICS_FILE)})
    return sorted(marked)


def _load_run(run_dir: Path) -> dict[str, Any]:
    record: dict[str, Any] = {"run_dir": str(run_dir)}
    if (run_dir / METRICS_FILE).is_file():
        record.update(json.loads((run_dir / METRICS_FILE).read_text()))
    if (run_dir / CONFIG_FILE).is_file():
        record["config"] = OmegaConf.to_container(OmegaConf.load(run_dir / CONFIG_FILE))
    overrides = read_overrides(run_dir)
    failure = read_failure(run_dir)
    if overrides is None and failure is not None:
        overrides = [str(o) for o in failure.get("overrides", [])]
    record["overrides"] = _override_dict(overrides or [])
    record["failure"] = failure
    if "eval/drop_fp" not in record and {"eval/acc_fp", "eval/acc_q"} <= set(record):
        # Runs from before drop_fp was recorded: the same number from their accuracies.
        record["eval/drop_fp"] = accuracy_drop(record["eval/acc_fp"], record["eval/acc_q"])
    return record


def _override_dict(overrides: Sequence[str]) -> dict[str, str]:
    """`["agent=ppo", "+x.y=1"]` -> `{"agent": "ppo", "x.y": "1"}` (deletions left out)."""
    out = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and not key.startswith("~"):
            out[key.lstrip("+")] = value
    return out


def scan_runs(*roots: str | Path) -> dict[str, list[dict[str, Any]]]:
    """The runs under `roots`, as `finished` (metrics.json, no failure), `failed` (failure.json)
    and `unfinished` (neither: still running, or killed)."""
    found: dict[str, list[dict[str, Any]]] = {"finished": [], "failed": [], "unfinished": []}
    for root in roots:
        for run_dir in _job_dirs(Path(root)):
            record = _load_run(run_dir)
            if record["failure"] is not None:
                found["failed"].append(record)
            elif (run_dir / METRICS_FILE).is_file():
                found["finished"].append(record)
            else:
                found["unfinished"].append(record)
    return found


def collect_runs(*roots: str | Path) -> list[dict[str, Any]]:
    """Every finished run under `roots` (metrics, plus `config`, `overrides`, `run_dir`)."""
    return scan_runs(*roots)["finished"]


def _lookup(record: dict[str, Any], dotted: str) -> Any:
    if dotted in record.get("overrides", {}):
        return record["overrides"][dotted]
    node: Any = record.get("config", {})
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _config_keys(record: dict[str, Any]) -> dict[str, str]:
    """The run's config as `dotted key -> value` text, less the keys that never group."""
    config = {k: v for k, v in record.get("config", {}).items() if k not in _NOT_A_GROUP}
    return {k: str(v) for k, v in flatten(config).items()}


def varied_keys(runs: Sequence[dict[str, Any]]) -> list[str]:
    """The keys that tell `runs` apart, fewest first: what a sweep varied, seeds aside.

    Candidates are the overrides (`agent`, `quant.act_bits`) and then every config key; a
    candidate is kept only when the ones kept so far do not already determine it (so
    `agent=ppo,sac` gives `agent`, not `agent.name`, `agent.model.n_steps`, ...). Grouping by the
    result never pools runs whose configs differ in anything but the seed (and the keys that
    follow from it, such as `data.seed: ${seed}`).
    """
    if len(runs) < 2:
        return []
    overrides = sorted({k for r in runs for k in r.get("overrides", {})} - _NOT_A_GROUP)
    configs = [_config_keys(r) for r in runs]
    config_keys = sorted({k for c in configs for k in c})
    columns: dict[str, list[str]] = {}
    for key in overrides:
        columns[key] = [str(r.get("overrides", {}).get(key, "(default)")) for r in runs]
    for key in config_keys:
        values = [c.get(key, "(absent)") for c in configs]
        if all(v == str(r.get("seed")) for v, r in zip(values, runs, strict=True)):
            continue  # follows from the seed
        columns.setdefault(key, values)
    # Prefer overrides, then `<group>.name`, then shorter keys.
    order = sorted(
        (k for k in columns if len(set(columns[k])) > 1),
        key=lambda k: (k not in overrides, not k.endswith(".name"), k.count("."), k),
    )
    kept: list[str] = []
    for key in order:
        parts = {tuple(columns[k][i] for k in kept) for i in range(len(runs))}
        finer = {tuple(columns[k][i] for k in [*kept, key]) for i in range(len(runs))}
        if len(finer) > len(parts):
            kept.append(key)
    return kept


def group_runs(
    runs: Sequence[dict[str, Any]], by: Sequence[str] | None = None
) -> tuple[list[str], dict[tuple[str, ...], list[dict[str, Any]]]]:
    """(keys, runs grouped by their values); `by` defaults to `varied_keys(runs)`."""
    keys = list(by) if by else varied_keys(runs)
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        groups[tuple(str(_lookup(r, k)) for k in keys)].append(r)
    for members in groups.values():
        members.sort(key=lambda m: int(m.get("seed", 0)))
    return keys, dict(sorted(groups.items()))


def summarize(
    runs: Sequence[dict[str, Any]],
    by: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    level: float = 0.95,
) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """One row per group: its key values, n, seeds, and per metric mean, std and bootstrap CI.

    `metrics` default to `default_metrics(runs)`; those that no run holds are left out.

    Returns:
        (group keys, metrics, rows); a row holds the keys' values, `n`, `seeds`, and
        `<metric>` -> `{"mean", "std", "ci"}` (std None for one seed, ci None below two).
    """
    keys, groups = group_runs(runs, by)
    metrics = [m for m in (metrics or default_metrics(runs)) if any(m in r for r in runs)]
    rows = []
    for values, members in groups.items():
        row: dict[str, Any] = dict(zip(keys, values, strict=True))
        row["n"] = len(members)
        row["seeds"] = [m.get("seed") for m in members]
        for metric in metrics:
            xs = [float(m[metric]) for m in members if metric in m]
            row[metric] = {
                "integer": all(x.is_integer() for x in xs),  # counts print without decimals
                "mean": statistics.mean(xs) if xs else None,
                "std": statistics.stdev(xs) if len(xs) > 1 else None,
                "ci": mean_ci(xs, level),
                "n": len(xs),
            }
        rows.append(row)
    return keys, list(metrics), rows


def _cell(stat: dict[str, Any], scale: float = 1.0) -> str:
    if stat["mean"] is None:
        return "-"
    digits = 0 if stat["integer"] and stat["std"] is None else (2 if scale != 1 else 3)
    text = f"{scale * stat['mean']:.{digits}f}"
    if stat["std"] is not None:
        text += f" ± {scale * stat['std']:.{digits}f}"
    if stat["ci"] is not None:
        text += f" [{scale * stat['ci'][0]:.{digits}f}, {scale * stat['ci'][1]:.{digits}f}]"
    return text


def _task(record: dict[str, Any]) -> str | None:
    """The task that made a run (its config's `task:`), None for runs that do not say."""
    task = record.get("config", {}).get("task")
    return str(task) if task else None


def default_metrics(runs: Sequence[dict[str, Any]]) -> list[str]:
    """The default metrics of the runs' tasks (`TASK_METRICS`), in the order the tasks first
    appear; a run that names no task (made before configs did) gets every task's defaults."""
    every = [m for metrics in TASK_METRICS.values() for m in metrics]
    chosen: list[str] = []
    for r in runs:
        task = _task(r)
        for m in TASK_METRICS.get(task, ()) if task else every:
            if m not in chosen:
                chosen.append(m)
    return chosen


def held_metrics(runs: Sequence[dict[str, Any]]) -> list[str]:
    """Every numeric metric some run holds (the seed aside), sorted: what `--metric` can name."""
    return sorted(
        {
            k
            for r in runs
            for k, v in r.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k != "seed"
        }
    )


def unit(metric: str, percent: bool = True) -> str:
    """How a metric prints: accuracies (fractions in files) as `%` and drops and gaps as
    `points` with `percent`, else `fraction`; "" for anything else (counts, bits)."""
    if not _FRACTION.search(metric):
        return ""
    if not percent:
        return "fraction"
    return "points" if _POINTS.search(metric) else "%"


def _reference(runs: Sequence[dict[str, Any]]) -> str:
    """Whose accuracy a search's gaps start from, named from the runs' `eval/reference`."""
    names = {
        "teacher": "the teacher's accuracy",
        "student": "the model's own full-precision accuracy (so this gap is a drop)",
    }
    refs = sorted({str(r["eval/reference"]) for r in runs if "eval/reference" in r})
    if len(refs) == 1:
        return names.get(refs[0], f"{refs[0]}'s accuracy")
    if refs:
        return f"the accuracy of each run's eval/reference ({' or '.join(refs)})"
    return "the accuracy of the run's reference (env.reference: teacher by default)"


def meaning(metric: str, runs: Sequence[dict[str, Any]]) -> str:
    """What a metric's number is, in words (a drop and a gap say what they subtract)."""
    if metric in MEANINGS:
        return MEANINGS[metric].format(reference=_reference(runs))
    if re.search(r"(^|[/_])drop(_|$)", metric):
        return "a drop: full-precision minus quantized accuracy of the same network"
    if re.search(r"(^|[/_])gap(_|$)", metric):
        return "a gap: a named reference's accuracy minus the quantized one's"
    if _FRACTION.search(metric):
        return "an accuracy or agreement"
    return "as the run recorded it"


def legend(metrics: Sequence[str], runs: Sequence[dict[str, Any]], percent: bool = True) -> str:
    """One line per metric: its unit and what its number is."""
    units = {"points": "percentage points", "%": "%", "fraction": "a fraction"}
    lines = []
    for m in metrics:
        shown = units.get(unit(m, percent), "")
        lines.append(f"- {m}{f' ({shown})' if shown else ''}: {meaning(m, runs)}")
    return "\n".join(lines)


def compare(
    runs: list[dict[str, Any]],
    by: str | Sequence[str] | None = None,
    keys: Sequence[str] | None = None,
    markdown: bool = True,
    level: float = 0.95,
    percent: bool = False,
) -> str:
    """One row per group of runs that differ only in the seed: n, seeds, and per metric
    mean ± std [bootstrap interval of the mean over seeds], then what each column is.

    Args:
        runs: finished runs (`collect_runs`).
        by: config or override keys to group by; default: every key the sweep varied.
        keys: metrics; default `default_metrics(runs)` that the runs hold.
        level: the bootstrap interval's level.
        percent: accuracies in %, drops and gaps in percentage points (else fractions, as
            in the files).
    """
    by = [by] if isinstance(by, str) else by
    group_keys, metrics, rows = summarize(runs, by, keys, level)
    units = [unit(m, percent) for m in metrics]
    header = [
        *(group_keys or ["runs"]),
        "n",
        "seeds",
        *(f"{m} ({u})" if u else m for m, u in zip(metrics, units, strict=True)),
    ]
    scales = [100 if u in ("%", "points") else 1 for u in units]
    table = [
        [
            *([row[k] for k in group_keys] or ["all"]),
            row["n"],
            ",".join(str(s) for s in row["seeds"]),
            *(_cell(row[m], scale) for m, scale in zip(metrics, scales, strict=True)),
        ]
        for row in rows
    ]
    note = f"mean ± std [{int(100 * level)}% bootstrap interval of the mean over seeds]"
    return (
        format_table(header, table, markdown=markdown)
        + f"\n\n{note}\n\n{legend(metrics, runs, percent)}"
    )


def _label(keys: Sequence[str], values: Sequence[str]) -> str:
    return " ".join(f"{k}={v}" for k, v in zip(keys, values, strict=True)) or "all"


def per_seed(
    runs: list[dict[str, Any]],
    by: str | Sequence[str] | None = None,
    key: str = "eval/gap",
    percent: bool = False,
) -> str:
    """A table of `key` for every (group, seed), for reading the spread by eye (`percent`: as
    in `compare`)."""
    by = [by] if isinstance(by, str) else by
    keys, groups = group_runs(runs, by)
    seeds = sorted({int(r.get("seed", 0)) for r in runs})
    scale, digits = (100, 2) if unit(key, percent) in ("%", "points") else (1, 3)
    rows = []
    for values, members in groups.items():
        vals = {int(m.get("seed", 0)): scale * float(m[key]) for m in members if key in m}
        rows.append(
            [_label(keys, values), *(f"{vals[s]:.{digits}f}" if s in vals else "-" for s in seeds)]
        )
    return format_table(["group", *(f"seed {s}" for s in seeds)], rows, markdown=True)


def not_finished(scanned: dict[str, list[dict[str, Any]]], keys: Sequence[str]) -> str:
    """Markdown lists of the failed runs (with their error) and the unfinished ones."""
    parts = []
    for status in ("failed", "unfinished"):
        records = scanned[status]
        if not records:
            continue
        rows = []
        for r in records:
            label = _label(keys, [str(_lookup(r, k)) for k in keys]) if keys else ""
            overrides = " ".join(f"{k}={v}" for k, v in r["overrides"].items())
            why = ""
            if r["failure"] is not None:
                why = f"{r['failure'].get('error')}: {r['failure'].get('message')}"
            rows.append([r["run_dir"], label or overrides, *([why] if why else [])])
        header = ["run dir", "group", *(["error"] if status == "failed" else [])]
        parts.append(
            f"{status} runs ({len(records)}, not averaged):\n\n"
            + format_table(header, [row[: len(header)] for row in rows], markdown=True)
        )
    return "\n\n".join(parts)


def write_csv(path: Path, keys: Sequence[str], metrics: Sequence[str], rows: list[dict]) -> Path:
    """The summary as CSV: group keys, n, seeds, and `<metric>_{mean,std,ci_low,ci_high}`."""
    header = [*keys, "n", "seeds"]
    for m in metrics:
        header += [f"{m}_mean", f"{m}_std", f"{m}_ci_low", f"{m}_ci_high"]

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            for row in rows:
                line = [*(row[k] for k in keys), row["n"], " ".join(str(s) for s in row["seeds"])]
                for m in metrics:
                    ci = row[m]["ci"] or (None, None)
                    line += [row[m]["mean"], row[m]["std"], ci[0], ci[1]]
                writer.writerow(["" if v is None else v for v in line])

    return atomic_write(path, write)


def compare_plot(
    path: Path,
    runs: list[dict[str, Any]],
    by: str | Sequence[str] | None = None,
    key: str = "eval/gap",
) -> Path:
    """Each run's `key` as a dot, grouped as in `compare`, with the group means as bars."""
    plt = pyplot()
    by = [by] if isinstance(by, str) else by
    keys, groups = group_runs(runs, by)
    shown = unit(key)
    scale = 100 if shown in ("%", "points") else 1
    names, values = [], []
    for group, members in groups.items():
        xs = [scale * float(m[key]) for m in members if key in m]
        if xs:
            names.append(_label(keys, group))
            values.append(xs)
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 2, 3.8))
    ax.bar(range(len(names)), [statistics.mean(v) for v in values], alpha=0.4)
    for i, xs in enumerate(values):
        ax.plot([i] * len(xs), xs, "ko", ms=4)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=7)
    ylabel = f"{key} ({shown})" if shown else key
    ax.set(ylabel=ylabel, title=f"{key} by {', '.join(keys) or 'run'} (dots: seeds)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """The CLI: print (and with `--out` write) the report; 2 when there is nothing to report."""
    args = _parser().parse_args(argv)
    scanned = scan_runs(*args.roots)
    runs = scanned["finished"]
    if not any(scanned.values()):
        print(f"error: no runs (metrics.json or failure.json) under {args.roots}", file=sys.stderr)
        return 2
    problem = metrics_problem(runs, args.metric)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    keys, metrics, rows = summarize(runs, args.by, args.metric, args.level)
    sections = []
    if runs:
        sections.append(compare(runs, args.by, args.metric, level=args.level, percent=True))
        first, shown = metrics[0], unit(metrics[0])
        heading = f"{first}{f' ({shown})' if shown else ''} per seed:\n\n"
        sections.append(heading + per_seed(runs, args.by, first, percent=True))
    else:
        sections.append("no finished runs")
    listed = not_finished(scanned, keys)
    if listed:
        sections.append(listed)
    text = "\n\n".join(sections)
    print(text)
    if args.out:
        out = Path(args.out)
        atomic_write(out, lambda tmp: tmp.write_text(text + "\n"))
        written = [out]
        if runs:
            written.append(write_csv(out.with_suffix(".csv"), keys, metrics, rows))
            written.append(compare_plot(out.with_suffix(".png"), runs, args.by, metrics[0]))
        print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Group the runs of sweeps by every key they varied; mean ± std and a "
        "bootstrap interval over seeds; failed and unfinished runs listed, not averaged. "
        "Tables print accuracies in %, drops and gaps in percentage points (files: fractions)."
    )
    parser.add_argument("roots", nargs="+", help="folders holding run dirs (Hydra multirun dirs)")
    parser.add_argument("--by", action="append", help="group by this key instead (repeatable)")
    parser.add_argument(
        "--metric",
        action="append",
        help="a metric to report (repeatable); default: the runs' task's (pairs: drop, acc_fp, "
        "acc_q, mean_bits; search: eval/gap, eval/drop_fp, ...)",
    )
    parser.add_argument("--level", type=float, default=0.95, help="bootstrap interval level")
    parser.add_argument("--out", help="write <out> (markdown), <out>.csv and <out>.png too")
    return parser


def metrics_problem(runs: Sequence[dict[str, Any]], asked: Sequence[str] | None) -> str | None:
    """Why the finished `runs` cannot be reported on the `asked` metrics (default: their tasks'),
    naming the metrics they do hold; None when they can (or when there are no finished runs)."""
    if not runs:
        return None
    if asked:
        absent = [m for m in asked if not any(m in r for r in runs)]
        if not absent:
            return None
        what = f"no finished run holds {', '.join(absent)}"
    elif any(m in r for r in runs for m in default_metrics(runs)):
        return None
    else:
        tasks = sorted({_task(r) or "(not named)" for r in runs})
        what = f"no default metric for runs of task {', '.join(tasks)}: pass --metric <name>"
    return f"{what}; the runs hold: {', '.join(held_metrics(runs)) or 'no numeric metrics'}"


if __name__ == "__main__":
    sys.exit(main())
