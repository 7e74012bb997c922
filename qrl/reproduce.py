"""The main job: the paper's table in one command (`make demo` runs it).

    python -m qrl.reproduce                          # digits CNN, seed 0
    python -m qrl.reproduce 'seeds=[0,1,2]'          # mean ± std over seeds
    python -m qrl.reproduce model=resnet18 model.student.width=8

For every seed: (A) teacher + distilled student (`qrl.distill`), (B) the detrimental and the
robust pair (`qrl.pairs`), (C) each pair evaluated and cross-evaluated under the other's policy,
uniform, random and fixed bits, ONNX Runtime int8, per layer and per class. Then the
agent-vs-baseline search on the first seed's student (`qrl.search`). Writes `report.md`,
`results.json`, plots, and last `metrics.json`; each stage keeps its own run dir inside `out`.
A rerun loads what is there: finished stages, each seed's Stage C (`seed<n>/stage_c.json`, kept
with what it was computed from) and finished searches of the same config on the same student.
Stage settings need no `+`: `pairs.train.rounds=30`, `distill.student.epochs=20`.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from qrl import distill, pairs, search
from qrl.checkpoints import load_model
from qrl.cli import checked_options, hydra_task
from qrl.config import CONF_DIR, STAGE_SHARED, checked_number, instantiate, load_config, to_dict
from qrl.errors import ConfigError
from qrl.pairing import NETWORK_FILE, PAIR_FILE, POLICY_FILE, weights_sha256
from qrl.pairing.evaluation import (
    cross_evaluation,
    flipped_grid,
    plot_cross,
    plot_vulnerability,
    vulnerability,
)
from qrl.pairs import KINDS, load_pair
from qrl.report import collect_runs
from qrl.runs import atomic_write, finished_run_of, load_run_config, start_run, write_metrics
from qrl.schema import merged, validate_reproduce, validate_search
from qrl.sweeps import task_device
from qrl.tables import format_table

RESULTS_FILE, REPORT_FILE = "results.json", "report.md"
SHARED = STAGE_SHARED  # groups every stage takes from this config
# Stage C of a seed (cross-evaluation, per-layer drops) and what it was computed from; a rerun
# with the same inputs loads it. The searches' victims (`weights_sha256` of the student), by agent.
STAGE_C_FILE, SEARCH_VICTIMS_FILE = "stage_c.json", "victims.json"
PAIR_FILES = (NETWORK_FILE, POLICY_FILE, PAIR_FILE)  # a pair, as Stage C loads it
STAGE_C_PLOTS = (
    "cross_evaluation.png",
    *(f"{kind}_{plot}.png" for kind in KINDS for plot in ("vulnerability", "flipped")),
)


def stage_config(name: str, cfg: DictConfig, extra: DictConfig | dict, **values: Any) -> DictConfig:
    """A stage's own config with this job's shared groups, `extra` and `values` merged over it."""
    stage = load_config(name)
    OmegaConf.set_struct(stage, False)
    for group in SHARED:
        if group in stage:
            stage[group] = cfg[group]
    return merged(stage, extra, values, at=f"{name}.")  # a bad value's type: one line


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
    stage_c = load_stage_c(root, stage_c_key(cfg, seed, root)) or cross_evaluate(cfg, seed, root)
    for kind in KINDS:
        pair_metrics[kind]["per_layer_drop"] = stage_c["per_layer_drop"][kind]
    return {
        "seed": seed,
        "root": str(root),
        "teacher/acc": distill_metrics["teacher/acc"],
        "student/acc": distill_metrics["student/acc"],
        "pairs": {k: {**v, "run_dir": str(root / k)} for k, v in pair_metrics.items()},
        "cross": [{**r, "seed": seed} for r in stage_c["cross"]],
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stage_c_key(cfg: DictConfig, seed: int, root: Path) -> dict[str, Any]:
    """What Stage C's numbers come from: the seed, `cross`, the test split (the distill run's
    data) and both pairs' files (a pair that is loaded again is not rewritten)."""
    key = {
        "seed": seed,
        "cross": to_dict(cfg.cross),
        "data": to_dict(load_run_config(root / "distill").data),
        "pairs": {
            kind: {name: _sha256(root / kind / name) for name in PAIR_FILES} for kind in KINDS
        },
    }
    return dict(json.loads(json.dumps(key)))  # as it reads back from STAGE_C_FILE


def load_stage_c(root: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The seed's stored Stage C when it was computed from `key` and its plots are there."""
    path = root / STAGE_C_FILE
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if stored.get("key") != key or not all((root / p).is_file() for p in STAGE_C_PLOTS):
        return None
    print(f"{path} holds this Stage C already: loading it (not computed again)")
    return dict(stored)


def cross_evaluate(cfg: DictConfig, seed: int, root: Path) -> dict[str, Any]:
    """Stage C for one seed: cross-evaluation rows, per-layer drops, plots; stored in
    `STAGE_C_FILE` with its key and returned as it reads back (a rerun gives the same bytes)."""
    key = stage_c_key(cfg, seed, root)
    device = task_device(cfg)  # Stage C where the pairs trained
    loaded = {kind: load_pair(root / kind, space="bits").to(device) for kind in KINDS}
    data = instantiate(load_run_config(root / "distill").data)  # the pairs' split
    test = data.test
    rows = cross_evaluation(
        loaded,
        test,
        seed=seed,
        pattern_limit=int(cfg.cross.pattern_limit),
        pattern_samples=int(cfg.cross.pattern_samples),
    )
    plot_cross(root / "cross_evaluation.png", rows)
    per_layer = {}
    for kind, pair in loaded.items():
        vuln = vulnerability(pair, test)
        plot_vulnerability(root / f"{kind}_vulnerability.png", kind, pair, vuln)
        flipped_grid(root / f"{kind}_flipped.png", kind, vuln, data.class_names)
        per_layer[kind] = vuln["per_layer"]
    record = {"key": key, "cross": rows, "per_layer_drop": per_layer}
    return dict(json.loads(_write_json(root / STAGE_C_FILE, record)))


def _write_json(path: Path, value: Any) -> str:
    text = json.dumps(value, indent=2) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return text


def run_search(cfg: DictConfig, victim_run: Path, root: Path) -> list[dict[str, Any]]:
    """The agent-vs-baseline input-distribution search on one student, each agent alike.

    A finished search of the same config on the same student (`SEARCH_VICTIMS_FILE`) is
    loaded, not run again."""
    victims_path = root / SEARCH_VICTIMS_FILE
    victims = json.loads(victims_path.read_text()) if victims_path.is_file() else {}
    student = weights_sha256(load_model(victim_run / "student.pt")[0])
    for agent in cfg.search.agents:
        print(f"\n== search: {agent}, {cfg.search.evaluations} evaluations (python -m qrl.search)")
        search_cfg = search_config(cfg, str(agent), victim_run, root)
        out = Path(search_cfg.out)
        if victims.get(str(agent)) == student and finished_run_of(out, search_cfg):
            print(f"{out} holds this search already, on this student: loading it")
            continue
        search.run(search_cfg)
        victims[str(agent)] = student
        _write_json(victims_path, victims)
    return collect_runs(root)


def search_config(cfg: DictConfig, agent: str, victim_run: Path, root: Path) -> DictConfig:
    """One agent's `qrl.search` config: conf/search.yaml, `search.overrides`, this job's values."""
    search_cfg = load_config("search", [f"agent={agent}"])
    OmegaConf.set_struct(search_cfg, False)
    search_cfg.quant, search_cfg.logger = cfg.quant, cfg.logger
    return merged(
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
        at="search.overrides.",
    )


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
    lines = [
        *_intro(results["seeds"]),
        *_pairs_section(per_seed, out),
        *_cross_section(results["cross_evaluation"]),
        *_kernel_section(per_seed),
        *_failure_section(per_seed, out),
        *_search_section(searches),
    ]
    return "\n".join(lines) + "\n"


def _intro(seeds: list[int]) -> list[str]:
    return [
        "# qrl: network-policy pairs under dynamic quantization",
        "",
        f"Seeds {seeds}; test split; accuracies in %, differences in percentage points. "
        "**drop** = the network's own full-precision accuracy − its quantized accuracy on the "
        "same inputs (what quantization causes); **gap to teacher** = teacher accuracy − "
        "quantized accuracy.",
        "",
    ]


def _pairs_section(per_seed: list[dict[str, Any]], out: Path) -> list[str]:
    """The pairs' table (mean ± std over seeds), then each seed's values and run dirs."""
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
    seed_header = ["seed", "pair", "FP acc", "DPTQ acc", "drop", "mean bits", "run dir (load_pair)"]
    return [
        "## The pairs (mean ± std over seeds)",
        "",
        format_table(header, rows, markdown=True),
        "",
        "Per seed:",
        "",
        format_table(seed_header, seed_rows, markdown=True),
        "",
    ]


def _cross_section(cross: list[dict[str, Any]]) -> list[str]:
    """Each network under the other policies, grouped over seeds."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in cross:
        grouped[(row["network"], row["policy"])].append(row)
    rows = [
        [
            net,
            pol,
            _pm([r["acc_q"] for r in rs]),
            _pm([r["drop"] for r in rs]),
            _pm([r["mean_bits"] for r in rs], scale=1.0),
            "; ".join(f"s{r['seed']}: {r['note']}" for r in rs if r["note"]),
        ]
        for (net, pol), rs in grouped.items()
    ]
    header = ["network", "policy", "DPTQ acc", "drop (FP − DPTQ)", "mean bits", "per seed"]
    return [
        "## Cross-evaluation: each network under other policies (drop, mean ± std over seeds)",
        "",
        format_table(header, rows, markdown=True),
        "",
    ]


def _kernel_section(per_seed: list[dict[str, Any]]) -> list[str]:
    """Each pair's network on ONNX Runtime's dynamic int8 kernel, no policy."""
    rows = [
        [
            kind,
            _pm([s["pairs"][kind]["acc_fp"] for s in per_seed]),
            _pm([s["pairs"][kind]["acc_onnx_int8"] for s in per_seed]),
            _pm([s["pairs"][kind]["drop_onnx_int8"] for s in per_seed]),
        ]
        for kind in KINDS
    ]
    header = ["pair", "FP acc", "ORT int8 acc", "drop (FP − ORT int8)"]
    return [
        "## On a real kernel: ONNX Runtime dynamic int8 (8-bit, no policy)",
        "",
        format_table(header, rows, markdown=True),
        "",
    ]


def _failure_section(per_seed: list[dict[str, Any]], out: Path) -> list[str]:
    """The first seed's per-layer drops, with its vulnerability, flipped-input and cross plots."""
    lines = ["## Where the failure lives (first seed)", ""]
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
    return [*lines, "", f"![cross-evaluation]({_rel(first / 'cross_evaluation.png', out)})", ""]


def _search_section(searches: list[dict[str, Any]]) -> list[str]:
    """The agent-vs-baseline search table (nothing when no agent searched)."""
    if not searches:
        return []
    return [
        "## Input-distribution search, agent vs random baseline (first seed's student)",
        "",
        "eval/gap = held-out teacher accuracy − quantized accuracy under the found "
        "distribution (mostly the student's own error under shift); eval/drop_fp = "
        "held-out full-precision student − quantized (what quantization causes).",
        "",
        _search_table(searches),
    ]


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


def checked_seeds(value: Any) -> list[int]:
    """`seeds` as a list of distinct integers >= 0, or a `ConfigError` saying how to write it."""
    shown = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value
    error = ConfigError(
        f"seeds must be a non-empty list of distinct integers >= 0, such as 'seeds=[0,1,2]' "
        f"(one seed: 'seeds=[3]'), got {shown!r}"
    )
    if not isinstance(value, ListConfig | list | tuple) or not value:
        raise error
    try:
        seeds = [int(checked_number(s, "seeds", int, low=0)) for s in value]
    except ConfigError:
        raise error from None
    if len(set(seeds)) != len(seeds):
        raise error
    return seeds


def run(cfg: DictConfig) -> dict[str, Any]:
    """Stages A, B, C for every seed, the search, then report.md, results.json, metrics.json."""
    seeds = checked_seeds(cfg.seeds)
    # every stage's values checked before any dir is touched
    task_device(cfg)  # device=cuda without a GPU: one clear error
    validate_reproduce(cfg)  # its own stage nodes, `search` and `cross` (qrl.schema)
    distill.check_config(stage_config("distill", cfg, cfg.distill))
    pair_cfg = stage_config("pairs", cfg, cfg.pairs)
    pairs.check_config(pair_cfg)
    if pair_cfg.eval.split != "test":
        raise ConfigError(
            f"the report evaluates every pair on the test split: leave pairs.eval.split at test "
            f"(got {pair_cfg.eval.split!r}), or run python -m qrl.pairs for another split"
        )
    if cfg.search.agents:  # the search stage's config too, before any stage runs
        stage = search_config(cfg, str(cfg.search.agents[0]), Path(), Path())
        validate_search(stage, at="search.overrides.")
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
