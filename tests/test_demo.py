"""`make demo` (`python -m qrl.reproduce`): a small run in `make test`, the real one marked slow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qrl import reproduce
from qrl.config import load_config
from qrl.pairs import load_pair

SMALL = [
    "data=synthetic",
    "+distill.teacher.epochs=3",  # the old spelling of a stage's setting still works
    "distill.student.epochs=3",
    "model.teacher.width=8",
    "model.student.width=4",
    "pairs.train.rounds=2",
    "pairs.train.net_steps=2",
    "pairs.ppo.n_envs=16",
    "pairs.ppo.model.n_steps=4",
    "pairs.ppo.model.batch_size=32",
    "search.agents=[random]",
    "search.evaluations=6",
    "search.overrides.eval.samples=64",
    "search.overrides.archive.grid=4",
    "cross.pattern_limit=50",
    # the input pairs, tiny (tests/test_input_pairs.py's settings; a tiny audit)
    "input_pairs.train.rounds=2",
    "input_pairs.train.net_steps=2",
    "input_pairs.train.settle_steps=5",
    "input_pairs.train.evaluations_per_round=4",
    "input_pairs.train.eval_batch=16",
    "input_pairs.train.batch_size=16",
    "input_pairs.agent.model.n_steps=4",
    "input_pairs.agent.model.batch_size=4",
    "input_pairs.agent.model.n_epochs=2",
    "input_pairs.eval.random=3",
    "input_pairs.eval.audit.evaluations=4",
    "progress=false",
]
# results.json's keys of a pair; an input pair's own beside them (ONNX Runtime int8)
PAIR_KEYS = {"acc_fp", "acc_q", "drop", "mean_bits", "acc_teacher", "drop_uniform"}
PAIR_KEYS |= {"drop_random", "drop_onnx_int8", "acc_onnx_int8", "run_dir", "per_seed"}
INPUT_KEYS = {"acc_ort", "drop_ort", "acc_ort_clean", "drop_random_median", "audit_worst_drop"}


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole pipeline, small, run once (`SMALL`)."""
    out = tmp_path_factory.mktemp("reproduce")
    record = reproduce.run(load_config("reproduce", [f"out={out}", *SMALL]))
    assert json.loads((out / "metrics.json").read_text()) == record  # the run's record, last
    return out


def test_reproduce_writes_the_contract_and_a_report(reproduced: Path) -> None:
    """The whole pipeline, small: results.json holds the documented keys, pairs load back."""
    tmp_path = reproduced
    record = json.loads((tmp_path / "metrics.json").read_text())
    results = json.loads((tmp_path / "results.json").read_text())
    assert results == {k: v for k, v in record.items() if k in results}
    for key in ("teacher/acc", "student/acc"):
        assert 0.0 <= results[key] <= 1.0
    for kind in ("detrimental", "robust"):
        entry = results[kind]
        assert entry["drop"] == pytest.approx(entry["acc_fp"] - entry["acc_q"])
        assert abs(entry["mean_bits"] - 4.0) < 0.05
        assert load_pair(entry["run_dir"]).kind == kind
    text = (tmp_path / "report.md").read_text()
    assert "drop (FP − DPTQ)" in text and "robust policy" in text and "random" in text
    assert "drop (FP − ORT int8 per image), own distribution" in text
    assert "clean images' ORT int8 acc, batches of 64, m = 1 draws" in text
    assert (tmp_path / "metrics.json").is_file()
    for name in ("cross_evaluation.png", "detrimental_vulnerability.png", "robust_flipped.png"):
        assert (tmp_path / "seed0" / name).is_file(), name


def test_reproduce_adds_the_input_pairs_to_results(reproduced: Path) -> None:
    """results.json's `input_pairs/<kind>`: the bit-width pairs' keys and the ONNX Runtime ones,
    per seed too; the detrimental one is scored under its twin's distribution without training."""
    results = json.loads((reproduced / "results.json").read_text())
    for kind in ("detrimental", "robust"):
        entry = results[f"input_pairs/{kind}"]
        assert set(results[kind]) == PAIR_KEYS
        assert set(entry) >= PAIR_KEYS | INPUT_KEYS
        assert entry["drop_ort"] == pytest.approx(entry["acc_fp"] - entry["acc_ort"])
        assert entry["mean_bits"] == 8.0 and entry["audit_worst_drop"] is not None
        assert entry["twin/drop_ort"] is not None  # each scored under the other's distribution
        (seed,) = entry["per_seed"]
        assert seed["seed"] == 0 and set(seed) >= INPUT_KEYS
        assert seed["run_dir"] == entry["run_dir"] == str(reproduced / "seed0" / f"input_{kind}")
        pair = load_pair(entry["run_dir"], space="input")
        assert pair.kind == kind and list(pair.action) == seed["policy/action"]
    stored = json.loads((reproduced / "seed0" / reproduce.INPUT_TWIN_FILE).read_text())
    assert stored["twin"]["twin/drop_ort"] == results["input_pairs/detrimental"]["twin/drop_ort"]


def test_reproduce_without_the_input_pairs(tmp_path: Path) -> None:
    """`input_pairs.enabled=false`: no input pair runs; a bad value is one line, nothing written."""
    from qrl.errors import ConfigError

    cfg = load_config("reproduce", [f"out={tmp_path / 'x'}", "input_pairs.enabled=false"])
    assert reproduce.input_pairs_enabled(cfg) is False
    with pytest.raises(ConfigError, match=r"input_pairs\.enabled must be true or false"):
        reproduce.run(load_config("reproduce", [f"out={tmp_path / 'x'}", "input_pairs.enabled=3"]))
    with pytest.raises(ConfigError, match=r"input_pairs\.eval\.split at test"):
        reproduce.run(
            load_config("reproduce", [f"out={tmp_path / 'x'}", "input_pairs.eval.split=val"])
        )
    with pytest.raises(ConfigError, match=r"input_pairs\.train\.roundz"):
        load_config("reproduce", ["input_pairs.train.roundz=2"])
    assert not (tmp_path / "x").exists()
    # the input pairs keep their own int8 preset, not reproduce's quant (the bit-width pairs')
    stage = reproduce.input_pair_config(load_config("reproduce"), seed=0)
    assert stage.quant.name == "onnx_int8_dynamic" and "enabled" not in stage


def test_reproduce_refuses_bad_seeds_before_writing(tmp_path: Path) -> None:
    from qrl.errors import ConfigError

    with pytest.raises(ConfigError, match="seeds"):
        reproduce.run(load_config("reproduce", [f"out={tmp_path / 'x'}", "seeds=[0,0]"]))
    assert not (tmp_path / "x").exists()


def test_a_reproduce_rerun_resumes_its_stages_and_refuses_another_config(
    reproduced: Path,
) -> None:
    from qrl.errors import ConfigError

    tmp_path = reproduced  # what it changes (overwrite=true, below) still holds the contract
    cfg = [f"out={tmp_path}", *SMALL, "jobs=1"]  # the first run's stages ran side by side
    pair_log = (tmp_path / "seed0" / "robust" / "log.csv").read_text()
    input_log = (tmp_path / "seed0" / "input_robust" / "log.csv").read_text()
    reproduce.run(load_config("reproduce", cfg))  # the same config: every stage resumes
    assert (tmp_path / "seed0" / "robust" / "log.csv").read_text() == pair_log
    assert (tmp_path / "seed0" / "input_robust" / "log.csv").read_text() == input_log
    finished = (tmp_path / "metrics.json").read_text()
    with pytest.raises(ConfigError, match=r"search.evaluations: 6 -> 8"):
        reproduce.run(load_config("reproduce", [*cfg, "search.evaluations=8"]))
    assert (tmp_path / "metrics.json").read_text() == finished
    reproduce.run(load_config("reproduce", [*cfg, "search.evaluations=8", "overwrite=true"]))
    rerun = json.loads((tmp_path / "search" / "random" / "metrics.json").read_text())
    assert rerun["evaluations"] == 8  # the search's and the selection's together
    assert (tmp_path / "seed0" / "robust" / "log.csv").read_text() == pair_log  # resumed


@pytest.mark.slow
def test_make_demo_reproduces_the_pairs_on_digits(tmp_path: Path) -> None:
    """The default pipeline through the real CLI: the issue's targets on seed 0."""
    result = subprocess.run(
        [sys.executable, "-m", "qrl.reproduce", f"hydra.run.dir={tmp_path}", "progress=false"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    det, rob = results["detrimental"], results["robust"]
    assert det["drop"] >= 0.5
    assert abs(det["acc_fp"] - results["teacher/acc"]) <= 0.01
    assert abs(det["acc_fp"] - rob["acc_fp"]) <= 0.01
    assert rob["drop"] <= 0.01 and rob["drop_uniform"] <= 0.01 and rob["drop_random"] <= 0.01
    twin = [
        r
        for r in results["cross_evaluation"]
        if r["network"] == "detrimental" and r["policy"] == "robust policy"
    ]
    assert twin and twin[0]["drop"] <= 0.02
    assert "drop (FP − DPTQ)" in result.stdout


@pytest.mark.parametrize("seeds", ["seeds=[1.5]", "seeds=[a]", "seeds=3", "seeds=[-1]", "seeds=[]"])
def test_reproduce_seeds_must_be_a_list_of_integers(tmp_path: Path, seeds: str) -> None:
    from qrl.errors import ConfigError

    with pytest.raises(ConfigError, match=r"seeds must be a non-empty list of distinct") as info:
        reproduce.run(load_config("reproduce", [f"out={tmp_path / 'x'}", seeds]))
    assert "\n" not in str(info.value) and "'seeds=[3]'" in str(info.value)
    assert not (tmp_path / "x").exists()


def test_a_finished_reproduce_reruns_from_what_it_stored(
    reproduced: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rerun (here with `progress` changed) loads Stage C and the searches, the same bytes."""
    from omegaconf import OmegaConf

    from qrl import input_pairs, search

    evaluations = OmegaConf.load(reproduced / "config.yaml").search.evaluations
    cfg = [f"out={reproduced}", *SMALL, f"search.evaluations={evaluations}", "progress=true"]
    cfg.append("jobs=1")  # in this process, where the patches below apply
    results = (reproduced / "results.json").read_bytes()

    def computed_again(*args: object, **kwargs: object) -> None:
        raise AssertionError("a stored result was computed again")

    with monkeypatch.context() as patched:
        for name in ("cross_evaluation", "vulnerability", "plot_cross", "flipped_grid"):
            patched.setattr(reproduce, name, computed_again)
        patched.setattr(reproduce, "evaluate_input_pair", computed_again)
        patched.setattr(input_pairs, "run", computed_again)
        patched.setattr(search, "run", computed_again)
        reproduce.run(load_config("reproduce", cfg))
    assert (reproduced / "results.json").read_bytes() == results
    # another `cross` is another Stage C; another student, another search
    root, other = reproduced / "seed0", load_config("reproduce", [*cfg, "cross.pattern_limit=7"])
    assert reproduce.load_stage_c(root, reproduce.stage_c_key(other, 0, root)) is None
    victims = reproduced / "search" / reproduce.SEARCH_VICTIMS_FILE
    kept = victims.read_text()
    victims.write_text(json.dumps({"random": "another student"}))

    class SearchedAgain(Exception):
        pass

    def searched_again(*args: object, **kwargs: object) -> None:
        raise SearchedAgain

    monkeypatch.setattr(search, "run", searched_again)
    try:
        with pytest.raises(SearchedAgain):
            reproduce.run_search(load_config("reproduce", cfg), root / "distill", victims.parent)
    finally:
        victims.write_text(kept)


def test_the_report_keeps_its_sections_in_order(reproduced: Path) -> None:
    headings = [
        line for line in (reproduced / "report.md").read_text().splitlines() if line[:1] == "#"
    ]
    assert headings == [
        "# qrl: network-policy pairs under dynamic quantization",
        "## The pairs (mean ± std over seeds)",
        "## Cross-evaluation: each network under other policies (drop, mean ± std over seeds)",
        "## On a real kernel: ONNX Runtime dynamic int8 (8-bit, no policy, one image at a time)",
        "## Input-distribution pairs on ONNX Runtime int8 (mean ± std over seeds)",
        "## Where the failure lives (first seed)",
        "## Input-distribution search, agent vs random baseline (first seed's student)",
    ]
