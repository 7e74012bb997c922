"""Input-distribution pairs on ONNX Runtime's int8 kernel: per model and seed, both kinds.

    python experiments/input_pairs_table.py [--runs "cnn=0,1,2 mlp=0 resnet18=0"]
        [--audit-agents ppo,sac,random] [--out runs/experiments/input_pairs] [overrides ...]

For every model and seed: `python -m qrl.pairs space=input kind=detrimental`, then the robust
twin against it (`eval.twin=`); finished pairs are loaded, not retrained. Then, on the
detrimental network: its numbers under the twin's distribution, and an independent `qrl.audit`
by each of `--audit-agents` at the pair's audit budget (the default agent's audit is part of the
pair's own Stage C). Regenerates the `input_pairs` section of experiments/README.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import common
import numpy as np
import torch

from qrl.audit import audit
from qrl.pairing import load_pair
from qrl.pairing.input_evaluation import evaluate_input_pair, per_image
from qrl.quant import preset
from qrl.quant.backends import real_backend
from qrl.quant.cpu import describe_int8_accumulation
from qrl.scoring import correct, predict_logits, rate
from qrl.tables import format_table
from qrl.victim import distilled_victim

AUDIT_SEED = 1000  # added to the pair's seed, as the pair's own audit does


def train(model: str, seed: int, kind: str, out: Path, extra: list[str]) -> dict[str, Any]:
    """One pair through the CLI (loaded when finished); returns its metrics.json."""
    command = [
        sys.executable,
        "-m",
        "qrl.pairs",
        "space=input",
        f"kind={kind}",
        f"victim.model={model}",
        f"seed={seed}",
        f"out={out}",
        "progress=false",
        *extra,
    ]
    subprocess.run(command, check=True)
    return json.loads((out / "metrics.json").read_text())


def audit_drops(
    pair_dir: Path, model: str, seed: int, agents: list[str], evaluations: int, out: Path
) -> dict[str, float]:
    """ONNX Runtime's per-image drop under the worst distribution each agent's audit finds."""
    pair = load_pair(pair_dir, space="input")
    quant = preset("onnx_int8_dynamic", act_granularity="per_sample")
    victim, _, _ = distilled_victim(None, model, quant, "cpu", False)
    kernel = real_backend("onnxruntime", pair.network, victim.data.test.x[:8])
    drops = {}
    for agent in agents:
        cached = out / f"audit_{agent}" / "ort_drop.json"
        if cached.is_file():  # this agent's audit of this network, done before
            drops[agent] = float(json.loads(cached.read_text())["drop_ort"])
            continue
        found = audit(
            pair.network,
            victim.data,
            quant=quant,
            space="input",
            agent=agent,
            evaluations=evaluations,
            seed=seed + AUDIT_SEED,
            out=out / f"audit_{agent}",
            overrides=["confirm.backends=[]", "overwrite=true"],
            progress=False,
        )
        x, y = pair.distribution.sample(
            victim.data.test,
            len(victim.data.test),
            np.asarray(found.policy),
            torch.Generator().manual_seed(3),
        )
        fp = rate(correct(predict_logits(pair.network, x), y))
        drops[agent] = fp - rate(correct(per_image(kernel, x), y))
        cached.write_text(json.dumps({"drop_ort": drops[agent], "policy": found.description}))
    return drops


def twin_numbers(det_dir: Path, rob_dir: Path, model: str) -> dict[str, float]:
    """The detrimental network under the robust twin's distribution."""
    det, rob = load_pair(det_dir, space="input"), load_pair(rob_dir, space="input")
    victim, _, _ = distilled_victim(None, model, det.quant, "cpu", False)
    e = evaluate_input_pair(
        det,
        victim.teacher,
        victim.student,
        victim.data.test,
        twin_action=rob.action,
        random_count=1,
    )
    assert e.twin is not None
    return {
        "twin/acc_fp": e.twin.acc_fp,
        "twin/acc_ort": e.twin.acc_ort,
        "twin/drop_ort": e.twin.drop_ort,
    }


def pct(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.1f}"


def tables(rows: list[dict[str, Any]], agents: list[str]) -> list[str]:
    """The per-seed tables of the section (percent)."""
    det = [
        [
            r["model"],
            r["seed"],
            pct(r["d"]["acc_teacher_clean"]),
            pct(r["d"]["acc_fp_clean"]),
            pct(r["d"]["acc_ort_clean"]),
            pct(r["d"]["acc_student_fp"]),
            pct(r["d"]["acc_fp"]),
            pct(r["d"]["acc_ort"]),
            pct(r["d"]["drop_ort"]),
            pct(r["d"]["drop_random_median"]),
            pct(r["d"]["random_share_drop_20"]),
            pct(r["d"]["coupling/m1"]),
            pct(r["d"]["coupling_student/m1"]),
            pct(r["d"]["coupling/alone"]),
        ]
        for r in rows
    ]
    rob = [
        [
            r["model"],
            r["seed"],
            pct(r["r"]["acc_fp_clean"]),
            pct(r["d"]["acc_fp_clean"]),
            pct(r["r"]["twin/drop_ort"]),
            pct(r["r"]["drop_ort"]),
            pct(r["r"]["audit_worst_drop"]),
            pct(r["r"]["drop_random_median"]),
            pct(r["r"]["coupling/m1"]),
            pct(r["r"]["coupling/alone"]),
            pct(r["twin"]["twin/drop_ort"]),
        ]
        for r in rows
    ]
    aud = [
        [
            r["model"],
            r["seed"],
            pct(r["d"]["audit_worst_drop"]),
            *[pct(r["audits"].get(a)) for a in agents],
        ]
        for r in rows
    ]
    return [
        "**Detrimental pairs** (test split; ONNX Runtime int8 one image at a time unless "
        "said; drop = the network's full precision minus ONNX Runtime int8 on the same "
        "inputs; coupling: the clean images' ONNX Runtime accuracy in served batches of 64 "
        "with one draw of the pair's distribution, and served without it):",
        "",
        format_table(
            [
                "model",
                "seed",
                "teacher, clean",
                "fp, clean",
                "ORT, clean",
                "student fp, policy",
                "fp, policy",
                "ORT, policy",
                "drop, policy",
                "median drop, 200 random",
                "share of random dropping 20+",
                "coupling m=1",
                "student coupling m=1",
                "served alone",
            ],
            det,
            markdown=True,
        ),
        "",
        "**Robust twins** (drops as above): under the detrimental pair's distribution, its "
        "own, and the worst its independent audit found (CMA-ES, 1,000 evaluations); the last "
        "column is the detrimental network under the robust twin's distribution:",
        "",
        format_table(
            [
                "model",
                "seed",
                "fp, clean",
                "detrimental's fp, clean",
                "drop, detrimental's",
                "drop, own",
                "drop, audit's worst",
                "median drop, random",
                "coupling m=1",
                "served alone",
                "detrimental under twin's",
            ],
            rob,
            markdown=True,
        ),
        "",
        "**Independent audits of the detrimental network alone** (ONNX Runtime drop, one image "
        "at a time, under the distribution each agent's audit chose; 1,000 evaluations, the "
        "simulator per image; a seed the training never used):",
        "",
        format_table(["model", "seed", "es (CMA-ES, default)", *agents], aud, markdown=True),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", default="cnn=0,1,2 mlp=0 resnet18=0", help="models and their seeds"
    )
    parser.add_argument("--audit-agents", default="ppo,sac,random")
    parser.add_argument("--audit-evaluations", type=int, default=1000)
    parser.add_argument("--out", default="runs/experiments/input_pairs")
    parser.add_argument("overrides", nargs="*", help="further Hydra overrides of the pairs")
    args = parser.parse_args()
    common.enter_repo()
    agents = [a for a in args.audit_agents.split(",") if a]
    rows = []
    runs = [part.split("=") for part in args.runs.split()]
    for model, seeds in runs:
        for seed in (int(s) for s in seeds.split(",")):
            root = Path(args.out) / model / f"s{seed}"
            det = train(model, seed, "detrimental", root / "detrimental", args.overrides)
            rob = train(
                model,
                seed,
                "robust",
                root / "robust",
                [f"eval.twin={root / 'detrimental'}", *args.overrides],
            )
            twin = twin_numbers(root / "detrimental", root / "robust", model)
            audits = audit_drops(
                root / "detrimental", model, seed, agents, args.audit_evaluations, root
            )
            rows.append(
                {"model": model, "seed": seed, "d": det, "r": rob, "twin": twin, "audits": audits}
            )
            print(json.dumps({"model": model, "seed": seed, "audits": audits, **twin}))
    trained = [
        Path(args.out) / r["model"] / f"s{r['seed']}" / k / "network.pt"
        for r in rows
        for k in ("detrimental", "robust")
    ]
    section = "\n".join(
        [
            *common.heading(
                "Input-distribution pairs on ONNX Runtime's int8 kernel", None, trained
            ),
            "",
            "Each pair: `python -m qrl.pairs space=input` from the model's cached digits "
            "student (an SB3 PPO agent chooses the distribution; the network learns by KD + "
            "QAT against `onnx_int8_dynamic`, one image at a time). "
            f"{describe_int8_accumulation()}.",
            "",
            *tables(rows, agents),
        ]
    )
    common.update_readme("input_pairs", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
