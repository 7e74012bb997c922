"""The main job: the paper's table in one command (`make demo` runs it).

    python -m qrl.reproduce                          # digits CNN, seed 0
    python -m qrl.reproduce 'seeds=[0,1,2]'          # mean ± std over seeds
    python -m qrl.reproduce model=resnet18 model.student.width=8

For every seed: (A) teacher + distilled student (`qrl.distill`), (B) the robust pair, then the
detrimental one held under the robust twin's policy (`qrl.pairs`, `train.twin`), (C) each pair
evaluated and cross-evaluated under the other's policy, uniform, random and fixed bits, ONNX
Runtime int8, per layer and per class, then (D) the detrimental and the robust
input-distribution pair on the same student (`qrl.pairs space=input`, each with its Stage C on
ONNX Runtime int8; `input_pairs.enabled=false` skips them). Then the
agent-vs-baseline search on the first seed's student (`qrl.search`). Writes `report.md`,
`results.json`, plots, and last `metrics.json`; each stage keeps its own run dir inside `out`.
A rerun loads what is there: finished stages, each seed's Stage C (`seed<n>/stage_c.json`, kept
with what it was computed from), finished input pairs of the same config on the same student
and the detrimental one's score under its twin's distribution (`seed<n>/input_twin.json`), and
finished searches of the same config on the same student. Stage settings need no `+`:
`pairs.train.rounds=30`, `distill.student.epochs=20`, `input_pairs.train.rounds=10`.
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
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from qrl import distill, input_pairs, pairs, search
from qrl.checkpoints import load_model
from qrl.cli import checked_options, hydra_task
from qrl.config import (
    CONF_DIR,
    STAGE_SHARED,
    checked_number,
    instantiate,
    load_config,
    stage_shared,
    to_dict,
)
from qrl.errors import ConfigError
from qrl.pairing import NETWORK_FILE, PAIR_FILE, POLICY_FILE, weights_sha256
from qrl.pairing.evaluation import (
    cross_evaluation,
    flipped_grid,
    plot_cross,
    plot_vulnerability,
    vulnerability,
)
from qrl.pairing.input_evaluation import COUPLING, SERVED_BATCH, evaluate_input_pair
from qrl.pairs import KINDS, load_pair
from qrl.report import collect_runs
from qrl.runs import (
    METRICS_FILE,
    atomic_write,
    finished_run_of,
    load_run_config,
    start_run,
    write_metrics,
)
from qrl.schema import merged, validate_reproduce, validate_search
from qrl.scoring import accuracy_drop
from qrl.side_by_side import Job, SideBySide, resolve_jobs
from qrl.sweeps import task_device
from qrl.tables import format_table
from qrl.victim import load_victim

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
# The input pairs (`seed<n>/input_<kind>`) and the detrimental one's score under the robust
# twin's distribution, with what it was computed from (the robust pair is trained after it).
INPUT_TWIN_FILE = "input_twin.json"
# results.json's keys of a pair: the bit-width pairs' (an input pair's, `input_numbers`), then
# an input pair's own on ONNX Runtime int8, one image at a time (`InputPairEvaluation`).
PAIR_KEYS = (
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
POLICY_KEYS = ("policy/description", "policy/action")  # an input pair's, per seed
INPUT_BITS = 8  # an input pair's bits everywhere (qrl.input_pairs refuses other bits)
COUPLED = tuple(f"m{m}" for m in COUPLING)  # batch coupling's keys: m inputs of 64 drawn
INPUT_KEYS = ("acc_ort", "drop_ort", "acc_ort_clean", "drop_random_median", "audit_worst_drop")
INPUT_MORE_KEYS = (
    "drop_random_p90",
    "random_share_drop_20",
    "twin/acc_fp",
    "twin/acc_ort",
    "twin/drop_ort",
    *(f"{who}/{n}" for who in ("coupling", "coupling_student") for n in ("alone", *COUPLED)),
)


def stage_config(
    name: str, cfg: DictConfig, *extra: DictConfig | dict, **values: Any
) -> DictConfig:
    """A stage's own config with this job's shared groups, `extra` and `values` merged over it."""
    stage = load_config(name)
    OmegaConf.set_struct(stage, False)
    for group in stage_shared(name):  # input pairs keep their own quant (int8)
        if group in stage:
            stage[group] = cfg[group]
    return merged(stage, *extra, values, at=f"{name}.")  # a bad value's type: one line


def run_seed(
    cfg: DictConfig, seed: int, root: Path, side: SideBySide | None = None
) -> dict[str, Any]:
    """Stages A to D for one seed; returns this seed's numbers and the cross-evaluation.
    `side` runs the independent stages (default: in turn, in this process)."""
    side = side or SideBySide(1)
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
    # --- B: the robust pair, then the detrimental one held under its twin's policy ----------
    print(f"\n== seed {seed}: B. robust and detrimental pairs (python -m qrl.pairs kind=...)")
    pair_metrics = {}
    for kind in ("robust", "detrimental"):
        twin = {"train": {"twin": str(root / "robust")}} if kind == "detrimental" else {}
        stage = stage_config(
            "pairs",
            cfg,
            cfg.pairs,
            twin,
            kind=kind,
            out=str(root / kind),
            victim={"run": str(distill_dir)},
            **common,
        )
        pair_metrics[kind] = pairs.run(stage)
    pair_metrics = {kind: pair_metrics[kind] for kind in KINDS}
    # --- C: cross-evaluation, vulnerability ------------------------------------------------
    print(f"\n== seed {seed}: C. cross-evaluation on the test split")
    stage_c = load_stage_c(root, stage_c_key(cfg, seed, root)) or cross_evaluate(cfg, seed, root)
    for kind in KINDS:
        pair_metrics[kind]["per_layer_drop"] = stage_c["per_layer_drop"][kind]
    # --- D: the input-distribution pairs on the same student --------------------------------
    inputs = run_input_pairs(cfg, seed, root, common, side) if input_pairs_enabled(cfg) else {}
    return {
        "seed": seed,
        "root": str(root),
        "teacher/acc": distill_metrics["teacher/acc"],
        "student/acc": distill_metrics["student/acc"],
        "pairs": {k: {**v, "run_dir": str(root / k)} for k, v in pair_metrics.items()},
        "cross": [{**r, "seed": seed} for r in stage_c["cross"]],
        "input_pairs": inputs,
    }


def side_by_side_processes(cfg: DictConfig) -> int:
    """`jobs`: how many independent stages (the two input pairs' training, the
    searches) run at once, one process each; `auto`: one per core, at most 2."""
    try:
        return resolve_jobs(cfg.get("jobs", "auto"))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def quiet_beside(side: SideBySide) -> dict[str, Any]:
    """Stages that run side by side draw no progress bars (they would overwrite each other's
    line): each prints when it finishes, and logs each round to its own `log.csv`."""
    return {"progress": False} if side.parallel else {}


def input_pairs_enabled(cfg: DictConfig) -> bool:
    """`input_pairs.enabled`: whether the seeds' input pairs run (true or false, else one line)."""
    value = cfg.input_pairs.get("enabled", True)
    if not isinstance(value, bool):
        raise ConfigError(f"input_pairs.enabled must be true or false, got {value!r}")
    return value


def input_pair_config(cfg: DictConfig, **values: Any) -> DictConfig:
    """An input pair's config: conf/input_pairs.yaml (its own int8 quant), reproduce's logger,
    the `input_pairs` node (less `enabled`, reproduce's own key) and `values` over it."""
    node = {k: v for k, v in to_dict(cfg.input_pairs).items() if k != "enabled"}
    return stage_config("input_pairs", cfg, node, **values)


def input_dir(root: Path, kind: str) -> Path:
    return root / f"input_{kind}"


def run_input_pairs(
    cfg: DictConfig, seed: int, root: Path, common: dict[str, Any], side: SideBySide
) -> dict[str, dict[str, Any]]:
    """Stage D for one seed: the detrimental, then the robust input pair (`eval.twin`: the
    detrimental one) on the seed's distilled student, then the detrimental one under the robust
    twin's distribution (`input_twin_scores`). A finished pair of the same config on the same
    student is loaded, not run again; an interrupted one resumes from its last round."""
    distill_dir = root / "distill"
    student = weights_sha256(load_model(distill_dir / "student.pt")[0])
    values = {k: v for k, v in common.items() if k != "device"}  # input pairs: the CPU
    stages = {}
    for kind in KINDS:
        twin = str(input_dir(root, "detrimental")) if kind == "robust" else None
        stages[kind] = stage = input_pair_config(
            cfg,
            kind=kind,
            out=str(input_dir(root, kind)),
            victim={"run": str(distill_dir)},
            eval={"twin": twin},
            **values,
        )
        with open_dict(stage):  # as the stage records it (`qrl.input_pairs.run`)
            stage.victim.student_sha256 = student
    # Training first, side by side (the robust pair needs its twin only to be evaluated), then
    # each pair's Stage C in turn, which loads what the training saved.
    to_train = [k for k in KINDS if not finished_run_of(input_dir(root, k), stages[k])]
    if side.parallel and len(to_train) > 1 and all(stages[k].resume for k in to_train):
        print(f"\n== seed {seed}: D. detrimental and robust input pairs' training")
        quiet = quiet_beside(side)
        side.run(
            [
                Job(f"{k} input pair", input_pairs.train, (merged(stages[k], quiet),))
                for k in to_train
            ]
        )
    metrics = {}
    for kind in KINDS:
        print(f"\n== seed {seed}: D. {kind} input pair (python -m qrl.pairs space=input)")
        out = input_dir(root, kind)
        if kind in to_train:
            metrics[kind] = input_pairs.run(stages[kind])
        else:
            print(f"{out} holds this input pair already, on this student: loading it")
            metrics[kind] = json.loads((out / METRICS_FILE).read_text())
    metrics["detrimental"].update(input_twin_scores(stages["robust"], seed, root))
    return {k: {**v, "run_dir": str(input_dir(root, k))} for k, v in metrics.items()}


def input_twin_key(stage: DictConfig, seed: int, root: Path) -> dict[str, Any]:
    """What the detrimental input pair's score under its twin's distribution comes from: the
    seed, the draws (`eval.seed`), the test split (the distill run's data) and both pairs' files."""
    key = {
        "seed": seed,
        "eval_seed": int(stage.eval.seed),
        "data": to_dict(load_run_config(root / "distill").data),
        "pairs": {
            kind: {name: _sha256(input_dir(root, kind) / name) for name in PAIR_FILES}
            for kind in KINDS
        },
    }
    return dict(json.loads(json.dumps(key)))  # as it reads back from INPUT_TWIN_FILE


def input_twin_scores(stage: DictConfig, seed: int, root: Path) -> dict[str, Any]:
    """The detrimental input pair under the robust pair's distribution (`twin/*` keys), scored
    on the loaded pairs by the library, not trained again; stored in `INPUT_TWIN_FILE` with its
    key, loaded from there when the key matches."""
    path, key = root / INPUT_TWIN_FILE, input_twin_key(stage, seed, root)
    stored = _load_keyed(path, key)
    if stored is not None:
        return dict(stored["twin"])
    loaded = {kind: load_pair(input_dir(root, kind), space="input") for kind in KINDS}
    detrimental = loaded["detrimental"]
    victim = load_victim(root / "distill", detrimental.quant, "cpu")
    evaluation = evaluate_input_pair(
        detrimental,
        victim.teacher,
        victim.student,
        victim.data.test,
        twin_action=loaded["robust"].action,
        random_count=1,  # the random distributions and the audit are in the pair's metrics
        seed=int(stage.eval.seed),
    )
    twin = {k: v for k, v in evaluation.to_metrics().items() if k.startswith("twin/")}
    record = json.loads(_write_json(path, {"key": key, "twin": twin}))
    return dict(record["twin"])


def _load_keyed(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The record stored at `path` when it was computed from `key`."""
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(stored, dict) or stored.get("key") != key:
        return None
    print(f"{path} holds this result already: loading it (not computed again)")
    return stored


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


def run_search(
    cfg: DictConfig, victim_run: Path, root: Path, side: SideBySide | None = None
) -> list[dict[str, Any]]:
    """The agent-vs-baseline input-distribution search on one student, each agent alike.

    A finished search of the same config on the same student (`SEARCH_VICTIMS_FILE`) is
    loaded, not run again."""
    victims_path = root / SEARCH_VICTIMS_FILE
    victims = json.loads(victims_path.read_text()) if victims_path.is_file() else {}
    student = weights_sha256(load_model(victim_run / "student.pt")[0])
    side = side or SideBySide(1)
    jobs = []
    for agent in map(str, cfg.search.agents):
        print(f"\n== search: {agent}, {cfg.search.evaluations} evaluations (python -m qrl.search)")
        search_cfg = search_config(cfg, agent, victim_run, root)
        out = Path(search_cfg.out)
        if victims.get(agent) == student and finished_run_of(out, search_cfg):
            print(f"{out} holds this search already, on this student: loading it")
            continue
        jobs.append(Job(agent, search.run, (merged(search_cfg, quiet_beside(side)),)))
    side.run(jobs)
    victims.update(dict.fromkeys((job.name for job in jobs), student))
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
    """results.json: means over seeds, each pair's first run dir, and every seed's numbers; the
    input pairs (when they ran) as `input_pairs/<kind>`, with the same keys and their own."""
    results: dict[str, Any] = {
        "seeds": [s["seed"] for s in per_seed],
        "teacher/acc": statistics.mean(s["teacher/acc"] for s in per_seed),
        "student/acc": statistics.mean(s["student/acc"] for s in per_seed),
    }
    for kind in KINDS:
        runs = [{"seed": s["seed"], **s["pairs"][kind]} for s in per_seed]
        results[kind] = _entry(runs, PAIR_KEYS)
    results["cross_evaluation"] = [row for s in per_seed for row in s["cross"]]
    for kind in KINDS if all(s["input_pairs"] for s in per_seed) else ():
        runs = [{"seed": s["seed"], **input_numbers(s["input_pairs"][kind])} for s in per_seed]
        results[f"input_pairs/{kind}"] = _entry(runs, (*PAIR_KEYS, *INPUT_KEYS, *INPUT_MORE_KEYS))
    return results


def _entry(runs: list[dict[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """One pair's results.json entry: the mean of each key over seeds (`<key>_std` with more
    than one; None where no seed has the number), the first run dir, and every seed's values."""
    entry: dict[str, Any] = {}
    for key in keys:
        values = [float(r[key]) for r in runs if r.get(key) is not None]
        entry[key] = statistics.mean(values) if values else None
    if len(runs) > 1:
        for key in keys:
            values = [float(r[key]) for r in runs if r.get(key) is not None]
            entry[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
    entry["run_dir"] = runs[0]["run_dir"]
    entry["per_seed"] = [
        {k: r.get(k) for k in ("seed", *keys, "run_dir", *POLICY_KEYS) if k in r} for r in runs
    ]
    return entry


def input_numbers(metrics: dict[str, Any]) -> dict[str, Any]:
    """An input pair's numbers under the bit-width pairs' keys, each with its meaning for a pair
    whose policy is a distribution at int8, beside its own (`metrics.json` of `qrl.input_pairs`).

    acc_fp, acc_q (qrl's simulator of the int8 kernel), drop, acc_teacher: under the pair's
    distribution; mean_bits: 8; drop_uniform: the simulator's drop on clean data (no policy);
    drop_random: the median ONNX Runtime drop over random distributions; acc_onnx_int8,
    drop_onnx_int8: ONNX Runtime int8 on clean data, one image at a time."""
    return {
        **metrics,
        "mean_bits": float(INPUT_BITS),
        "drop_uniform": accuracy_drop(metrics["acc_fp_clean"], metrics["acc_q_clean"]),
        "drop_random": metrics["drop_random_median"],
        "acc_onnx_int8": metrics["acc_ort_clean"],
        "drop_onnx_int8": metrics["drop_ort_clean"],
    }


def report(
    results: dict[str, Any], per_seed: list[dict[str, Any]], searches: list, out: Path
) -> str:
    """report.md: the paper-style table, per-seed values, cross-evaluation, kernels, search."""
    lines = [
        *_intro(results["seeds"]),
        *_pairs_section(per_seed, out),
        *_cross_section(results["cross_evaluation"]),
        *_kernel_section(per_seed),
        *_input_section(results, out),
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
    header = ["pair", "FP acc", "ORT int8 acc per image", "drop (FP − ORT int8)"]
    return [
        "## On a real kernel: ONNX Runtime dynamic int8 (8-bit, no policy, one image at a time)",
        "",
        format_table(header, rows, markdown=True),
        "",
    ]


def _input_section(results: dict[str, Any], out: Path) -> list[str]:
    """The input-distribution pairs on ONNX Runtime's int8 kernel (nothing when they did not
    run): the table over seeds, batch coupling beside the distilled student, each seed's values."""
    entries = {kind: results.get(f"input_pairs/{kind}") for kind in KINDS}
    if not all(entries.values()):
        return []
    runs = {kind: entry["per_seed"] for kind, entry in entries.items() if entry}

    def pm(kind: str, key: str) -> str:
        values = [r[key] for r in runs[kind] if r.get(key) is not None]
        return _pm(values) if values else "-"

    rows = [
        [f"{kind} input pair", pm(kind, "acc_fp"), pm(kind, "acc_ort"), pm(kind, "drop_ort")]
        + [pm(kind, k) for k in ("twin/drop_ort", "acc_ort_clean", "drop_onnx_int8")]
        + [pm(kind, k) for k in ("drop_random_median", "drop_random_p90", "audit_worst_drop")]
        for kind in KINDS
    ]
    drop = "drop (FP − ORT int8 per image)"
    header = [
        "network",
        "FP acc, own distribution",
        "ORT int8 acc per image, own distribution",
        f"{drop}, own distribution",
        f"{drop}, twin's distribution",
        "ORT int8 acc per image, clean data",
        f"{drop}, clean data",
        f"{drop}, random distributions: median",
        f"{drop}, random: 90th percentile",
        f"{drop}, independent audit's worst",
    ]
    return [
        "## Input-distribution pairs on ONNX Runtime int8 (mean ± std over seeds)",
        "",
        "Each network with the input distribution its agent chose (own distribution), its twin's, "
        "clean test data, random distributions of the search's space, and the worst one an "
        "independent `qrl.audit` found. **drop** = the network's full-precision accuracy − ONNX "
        "Runtime dynamic int8 of the same network on the same inputs, one image at a time.",
        "",
        format_table(header, rows, markdown=True),
        "",
        *_coupling_table(runs),
        *_input_seed_table(runs, out),
    ]


def _coupling_table(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Batch coupling: clean images' ONNX Runtime accuracy in served batches with m draws."""
    networks = (
        ("coupling", "{} input pair"),
        ("coupling_student", "distilled student, {}'s draws"),
    )
    rows = [
        [label.format(kind), *(_pm([r[f"{who}/{n}"] for r in seeds]) for n in ("alone", *COUPLED))]
        for kind, seeds in runs.items()
        for who, label in networks
    ]
    served = f"clean images' ORT int8 acc, batches of {SERVED_BATCH}"
    header = ["network", f"{served}, no draws", *(f"{served}, m = {m} draws" for m in COUPLING)]
    return [
        f"Batch coupling: the accuracy of the clean test images in served batches of "
        f"{SERVED_BATCH} on ONNX Runtime int8 when m images of each batch are draws from the "
        "pair's own distribution (one int8 range per batch: the draws set the clean images' "
        "scale); no draws: the same clean images served without them.",
        "",
        format_table(header, rows, markdown=True),
        "",
    ]


def _input_seed_table(runs: dict[str, list[dict[str, Any]]], out: Path) -> list[str]:
    """Each seed's input pairs: ONNX Runtime numbers under the pair's own distribution (then
    clean, random, the audit's worst), the chosen distribution, the run dir."""

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.2f}"

    numbers = ("acc_fp", "acc_ort", "drop_ort", "acc_ort_clean", "drop_random_median")
    rows = [
        [
            r["seed"],
            kind,
            *(pct(r[k]) for k in (*numbers, "audit_worst_drop")),
            r.get("policy/description", ""),
            _rel(Path(r["run_dir"]), out),
        ]
        for kind, seeds in runs.items()
        for r in seeds
    ]
    drop = "drop (FP − ORT int8 per image)"
    header = ["seed", "pair", "FP acc", "ORT int8 acc per image", drop, "ORT int8 acc, clean"]
    header += [f"{drop}, random: median", f"{drop}, audit's worst", "own distribution", "run dir"]
    return ["Per seed:", "", format_table(header, rows, markdown=True), ""]


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


def check_input_pairs(stage: DictConfig) -> None:
    """The input pairs' config, as `qrl.input_pairs.run` checks it, before any stage runs."""
    input_pairs.check_config(stage)
    if stage.space.mode != "input":
        raise ConfigError(
            f"input pairs need space=input: leave input_pairs.space at input (got space mode "
            f"{stage.space.mode!r})"
        )
    if stage.eval.split != "test":
        raise ConfigError(
            f"the report evaluates every input pair on the test split: leave "
            f"input_pairs.eval.split at test (got {stage.eval.split!r}), or run python -m "
            "qrl.pairs space=input for another split"
        )


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
    side_by_side_processes(cfg)  # jobs=0: one clear error
    validate_reproduce(cfg)  # its own stage nodes, `search` and `cross` (qrl.schema)
    distill.check_config(stage_config("distill", cfg, cfg.distill))
    pair_cfg = stage_config("pairs", cfg, cfg.pairs)
    pairs.check_config(pair_cfg)
    if pair_cfg.eval.split != "test":
        raise ConfigError(
            f"the report evaluates every pair on the test split: leave pairs.eval.split at test "
            f"(got {pair_cfg.eval.split!r}), or run python -m qrl.pairs for another split"
        )
    if input_pairs_enabled(cfg):
        check_input_pairs(input_pair_config(cfg, seed=seeds[0]))
    if cfg.search.agents:  # the search stage's config too, before any stage runs
        stage = search_config(cfg, str(cfg.search.agents[0]), Path(), Path())
        validate_search(stage, at="search.overrides.")
    out, started = start_run(cfg)
    for name in (RESULTS_FILE, REPORT_FILE):  # until this run finishes, no result stands here
        (out / name).unlink(missing_ok=True)
    with SideBySide(side_by_side_processes(cfg)) as side:
        per_seed = [run_seed(cfg, seed, out / f"seed{seed}", side) for seed in seeds]
        searches = (
            run_search(cfg, out / f"seed{seeds[0]}" / "distill", out / "search", side)
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
