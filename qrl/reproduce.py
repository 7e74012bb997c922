"""The main job: the paper's table in one command (`make demo` runs it).

    python -m qrl.reproduce                          # digits CNN, seed 0
    python -m qrl.reproduce 'seeds=[0,1,2]'          # mean ± std over seeds
    python -m qrl.reproduce model=resnet18 model.student.width=8

For every seed: (A) teacher + distilled student (`qrl.distill`), (B) the detrimental and the
robust pair (`qrl.pairs`), (C) each pair evaluated and cross-evaluated under the other's policy,
uniform, random and fixed bits, ONNX Runtime int8, per layer and per class. Then the
agent-vs-baseline search on the first seed's student (`qrl.search`). Writes `report.md`,
`results.json`, plots, and last `metrics.json`; each stage keeps its own run dir inside `out`.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from qrl import distill, pairs, search
from qrl.cli import checked_options, hydra_task
from qrl.config import CONF_DIR, instantiate, load_config
from qrl.errors import ConfigError
from qrl.pairing.evaluation import (
    cross_evaluation,
    flipped_grid,
    plot_cross,
    plot_vulnerability,
    vulnerability,
)
from qrl.pairs import KINDS, load_pair
from qrl.report import collect_runs
from qrl.runs import atomic_write, load_run_config, start_run, write_metrics
from qrl.sweeps import task_device
from qrl.tables import format_table

RESULTS_FILE, REPORT_FILE = "results.json", "report.md"
SHARED = ("data", "model", "quant", "logger")  # groups every stage takes from this config


def stage_config(name: str, cfg: DictConfig, extra: DictConfig | dict, **values: Any) -> DictConfig:
    """A stage's own config with this job's shared groups, `extra` and `values` merged over it."""
    stage = load_config(name)
    OmegaConf.set_struct(stage, False)
    for group in SHARED:
        if group in stage:
            stage[group] = cfg[group]
    merged = OmegaConf.merge(stage, extra, values)
    assert isinstance(merged, DictConfig)
    return merged


def run_seed(cfg: DictConfig, seed: int, root: Path) -> dict[str, Any]:
    """Stages A, B and C for one seed; returns this seed's numbers and the cross-evaluation."""
    common = {
        "seed": seed,
        "progress": bool(cfg.progress),
        "overwrite": bool(cfg.overwrite),
        "device": str(cfg.get("device", "auto")),
    }
    # --- A: teacher and distilled student -------------------------------------------------
    print(f"\n== seed {seed}: A. teacher and distilled student (python -m qrl.distill)")
    distill_dir = root / "distill"
    distill_metrics = distill.run(
        stage_config("distill", cfg, cfg.distill, out=str(distill_dir), **common)
    )
    # --- B: the two pairs ----------------------------------------------------------------------
    pair_metrics = {}
    for kind in KINDS:
        print(f"\n== seed {seed}: B. {kind} pair (python -m qrl.pairs kind={kind})")
        pair_cfg = stage_config(
            "pairs",
            cfg,
            cfg.pairs,
            kind=kind,
            out=str(root / kind),
            victim={"run": str(distill_dir)},
            **common,
        )
        pair_metrics[kind] = pairs.run(pair_cfg)
    # --- C: cross-evaluation, vulnerability ------------------------------------------------
    print(f"\n== seed {seed}: C. cross-evaluation on the test split")
    loaded = {kind: load_pair(root / kind) for kind in KINDS}
    data = instantiate(load_run_config(distill_dir).data)  # the split the pairs were trained on
    test = data.test
    rows = cross_evaluation(
        loaded,
        test,
        seed=seed,
        pattern_limit=int(cfg.cross.pattern_limit),
        pattern_samples=int(cfg.cross.pattern_samples),
    )
    plot_cross(root / "cross_evaluation.png", rows)
    for kind, pair in loaded.items():
        vuln = vulnerability(pair, test)
        plot_vulnerability(root / f"{kind}_vulnerability.png", kind, pair, vuln)
        flipped_grid(root / f"{kind}_flipped.png", kind, vuln, data.class_names)
        pair_metrics[kind]["per_layer_drop"] = vuln["per_layer"]
    return {
        "seed": seed,
        "root": str(root),
        "teacher/acc": distill_metrics["teacher/acc"],
        "student/acc": distill_metrics["student/acc"],
        "pairs": {k: {**v, "run_dir": str(root / k)} for k, v in pair_metrics.items()},
        "cross": [{**r, "seed": seed} for r in rows],
    }


def run_search(cfg: DictConfig, victim_run: Path, root: Path) -> list[dict[str, Any]]:
    """The agent-vs-baseline input-distribution search on one student, each agent alike."""
    for agent in cfg.search.agents:
        print(f"\n== search: {agent}, {cfg.search.evaluations} evaluations (python -m qrl.search)")
        search_cfg = load_config("search", [f"agent={agent}"])
        OmegaConf.set_struct(search_cfg, False)
        search_cfg.quant, search_cfg.logger = cfg.quant, cfg.logger
        merged = OmegaConf.merge(
            search_cfg,
            cfg.search.overrides,
            {
                "victim": {"run": str(victim_run)},
                "budget": {"evaluations": int(cfg.search.evaluations)},
                "out": str(root / str(agent)),
                "seed": int(cfg.seeds[0]),
                "progress": bool(cfg.progress),
                "overwrite": bool(cfg.overwrite),
                "device": str(cfg.get("device", "auto")),
            },
        )
        assert isinstance(merged, DictConfig)
        search.run(merged)
    return collect_runs(root)


# --- the report ---------------------------------------------------------------------------------


def _pm(values: Sequence[float], scale: float = 100.0, digits: int = 2) -> str:
    """mean ± std (sample std; a lone value alone), scaled (100: percentage points)."""
    vals = [scale * v for v in values]
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def summarize(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """results.json: means over seeds, each pair's first run dir, and every seed's numbers."""
    keys = (
        "acc_fp",
        "acc_q",
        "drop",
        "mean_bits",
        "acc_teacher",
        "drop_uniform",
        "drop_random",
        "drop_onnx_int8",
        "acc_onnx_int8",
    )
    results: dict[str, Any] = {
        "seeds": [s["seed"] for s in per_seed],
        "teacher/acc": statistics.mean(s["teacher/acc"] for s in per_seed),
        "student/acc": statistics.mean(s["student/acc"] for s in per_seed),
    }
    for kind in KINDS:
        runs = [s["pairs"][kind] for s in per_seed]
        entry: dict[str, Any] = {k: statistics.mean(float(r[k]) for r in runs) for k in keys}
        if len(runs) > 1:
            entry.update({f"{k}_std": statistics.stdev(float(r[k]) for r in runs) for k in keys})
        entry["run_dir"] = runs[0]["run_dir"]
        entry["per_seed"] = [
            {"seed": s["seed"], **{k: s["pairs"][kind][k] for k in (*keys, "run_dir")}}
            for s in per_seed
        ]
        results[kind] = entry
    results["cross_evaluation"] = [row for s in per_seed for row in s["cross"]]
    return results


def report(
    results: dict[str, Any], per_seed: list[dict[str, Any]], searches: list, out: Path
) -> str:
    """report.md: the paper-style table, per-seed values, cross-evaluation, kernels, search."""
    seeds = results["seeds"]
    lines = [
        "# qrl: network-policy pairs under dynamic quantization",
        "",
        f"Seeds {seeds}; test split; accuracies in %, differences in percentage points. "
        "**drop** = the network's own full-precision accuracy − its quantized accuracy on the "
        "same inputs (what quantization causes); **gap to teacher** = teacher accuracy − "
        "quantized accuracy.",
        "",
        "## The pairs (mean ± std over seeds)",
        "",
    ]
    rows = [["teacher", _pm([s["teacher/acc"] for s in per_seed]), "-", "-", "-"]]
    rows.append(["distilled student", _pm([s["student/acc"] for s in per_seed]), "-", "-", "-"])
    for kind in KINDS:
        runs = [s["pairs"][kind] for s in per_seed]
        rows.append(
            [
                f"{kind} pair",
                _pm([r["acc_fp"] for r in runs]),
                _pm([r["acc_q"] for r in runs]),
                _pm([r["drop"] for r in runs]),
                _pm([r["mean_bits"] for r in runs], scale=1.0),
            ]
        )
    header = ["network", "FP acc", "DPTQ acc (own policy)", "drop (FP − DPTQ)", "mean bits"]
    lines += [format_table(header, rows, markdown=True), "", "Per seed:", ""]
    seed_rows = [
        [
            s["seed"],
            kind,
            f"{100 * s['pairs'][kind]['acc_fp']:.2f}",
            f"{100 * s['pairs'][kind]['acc_q']:.2f}",
            f"{100 * s['pairs'][kind]['drop']:.2f}",
            f"{s['pairs'][kind]['mean_bits']:.2f}",
            _rel(Path(s["pairs"][kind]["run_dir"]), out),
        ]
        for s in per_seed
        for kind in KINDS
    ]
    lines += [
        format_table(
            ["seed", "pair", "FP acc", "DPTQ acc", "drop", "mean bits", "run dir (load_pair)"],
            seed_rows,
            markdown=True,
        ),
        "",
        "## Cross-evaluation: each network under other policies (drop, mean ± std over seeds)",
        "",
    ]
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in results["cross_evaluation"]:
        grouped[(row["network"], row["policy"])].append(row)
    lines.append(
        format_table(
            ["network", "policy", "DPTQ acc", "drop (FP − DPTQ)", "mean bits", "per seed"],
            [
                [
                    net,
                    pol,
                    _pm([r["acc_q"] for r in rs]),
                    _pm([r["drop"] for r in rs]),
                    _pm([r["mean_bits"] for r in rs], scale=1.0),
                    "; ".join(f"s{r['seed']}: {r['note']}" for r in rs if r["note"]),
                ]
                for (net, pol), rs in grouped.items()
            ],
            markdown=True,
        )
    )
    lines += [
        "",
        "## On a real kernel: ONNX Runtime dynamic int8 (8-bit, no policy)",
        "",
        format_table(
            ["pair", "FP acc", "ORT int8 acc", "drop (FP − ORT int8)"],
            [
                [
                    kind,
                    _pm([s["pairs"][kind]["acc_fp"] for s in per_seed]),
                    _pm([s["pairs"][kind]["acc_onnx_int8"] for s in per_seed]),
                    _pm([s["pairs"][kind]["drop_onnx_int8"] for s in per_seed]),
                ]
                for kind in KINDS
            ],
            markdown=True,
        ),
        "",
        "## Where the failure lives (first seed)",
        "",
    ]
    first = Path(per_seed[0]["root"])
    for kind in KINDS:
        pair = per_seed[0]["pairs"][kind]
        per_layer = zip(
            pair["layer_names"], pair["per_layer_drop"], pair["bits_per_layer"], strict=True
        )
        lines.append(
            f"- {kind}: drop (points) when only one layer follows the policy, the others at 8 "
            "bits [that layer's mean bits under the policy]: "
            + ", ".join(f"{name} {100 * d:.1f} [{b:.2f}]" for name, d, b in per_layer)
        )
        lines.append(
            f"  ![{kind} vulnerability]({_rel(first / f'{kind}_vulnerability.png', out)}) "
            f"![{kind} flipped inputs]({_rel(first / f'{kind}_flipped.png', out)})"
        )
    lines += ["", f"![cross-evaluation]({_rel(first / 'cross_evaluation.png', out)})", ""]
    if searches:
        lines += [
            "## Input-distribution search, agent vs random baseline (first seed's student)",
            "",
            "eval/gap = held-out teacher accuracy − quantized accuracy under the found "
            "distribution (mostly the student's own error under shift); eval/drop_fp = "
            "held-out full-precision student − quantized (what quantization causes).",
            "",
            _search_table(searches),
        ]
    return "\n".join(lines) + "\n"


def _search_table(runs: list[dict[str, Any]]) -> str:
    rows = []
    for r in sorted(runs, key=lambda r: str(r.get("config", {}).get("agent", {}).get("name"))):
        name = r.get("config", {}).get("agent", {}).get("name", "?")
        rows.append(
            [
                name,
                f"{100 * r['eval/gap']:.2f}",
                f"{100 * r['eval/drop_fp']:.2f}",
                f"{100 * r['baseline/gap']:.2f}",
                r.get("evaluations", r["search/evaluations"]),  # search + selection
                r.get("policy/description", ""),
            ]
        )
    header = [
        "agent",
        "eval/gap (teacher − Q)",
        "eval/drop_fp (FP − Q)",
        "gap, data's own distribution",
        "evaluations",
        "best distribution",
    ]
    return format_table(header, rows, markdown=True)


def _rel(path: Path, out: Path) -> str:
    try:
        return str(path.relative_to(out))
    except ValueError:
        return str(path)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Stages A, B, C for every seed, the search, then report.md, results.json, metrics.json."""
    seeds = [int(s) for s in cfg.seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be a non-empty list of distinct integers, got {seeds}")
    # every stage's values checked before any dir is touched
    task_device(cfg)  # device=cuda without a GPU: one clear error
    distill.check_config(stage_config("distill", cfg, cfg.distill))
    pair_cfg = stage_config("pairs", cfg, cfg.pairs)
    pairs.check_config(pair_cfg)
    if pair_cfg.eval.split != "test":
        raise ConfigError(
            f"the report evaluates every pair on the test split: leave pairs.eval.split at test "
            f"(got {pair_cfg.eval.split!r}), or run python -m qrl.pairs for another split"
        )
    if int(cfg.search.evaluations) < 1 and cfg.search.agents:
        raise ConfigError(f"search.evaluations must be >= 1, got {cfg.search.evaluations}")
    out, started = start_run(cfg)
    for name in (RESULTS_FILE, REPORT_FILE):  # until this run finishes, no result stands here
        (out / name).unlink(missing_ok=True)
    per_seed = [run_seed(cfg, seed, out / f"seed{seed}") for seed in seeds]
    searches = (
        run_search(cfg, out / f"seed{seeds[0]}" / "distill", out / "search")
        if cfg.search.agents
        else []
    )
    results = summarize(per_seed)
    if searches:
        results["search"] = {
            str(r["config"]["agent"]["name"]): {
                k: r[k] for k in ("eval/gap", "eval/drop_fp", "baseline/gap", "run_dir") if k in r
            }
            for r in searches
        }
    text = report(results, per_seed, searches, out)
    atomic_write(out / REPORT_FILE, lambda tmp: tmp.write_text(text))
    payload = json.dumps(results, indent=2) + "\n"
    atomic_write(out / RESULTS_FILE, lambda tmp: tmp.write_text(payload))
    record = write_metrics(out, results, seed=seeds[0], started=started)
    print("\n" + text)
    print(
        f"wrote {out}/{REPORT_FILE}, {RESULTS_FILE}, metrics.json ({record['wall_time_s']:.0f} s)"
    )
    return record


@checked_options
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="reproduce")
def main(cfg: DictConfig) -> None:
    hydra_task(run, cfg)


if __name__ == "__main__":
    main()
