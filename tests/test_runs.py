"""Run dirs you can trust: one config per dir, validation before the dir is touched, no
duplicated log rows on rerun."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from qrl import distill, quant_eval, search, searching
from qrl.config import load_config
from qrl.errors import ConfigError
from qrl.runs import CONFIG_FILE, METRICS_FILE, start_run, write_metrics
from tests.conftest import FAST_SEARCH, QUICK


@pytest.fixture
def tiny_run(quick_run: Path) -> Path:
    return quick_run


def _finished(tmp_path: Path, **values: object) -> tuple[Path, object]:
    cfg = OmegaConf.create({"out": str(tmp_path), "seed": 0, "resume": True, **values})
    _, started = start_run(cfg)
    write_metrics(tmp_path, {"x": 1.0}, seed=0, started=started)
    return tmp_path, cfg


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}


def test_a_different_config_names_the_keys_and_changes_nothing(tmp_path: Path) -> None:
    run_dir, _ = _finished(tmp_path, model={"student": {"_target_": "qrl.models.SmallCNN"}})
    before = _snapshot(run_dir)
    other = OmegaConf.create(
        {"out": str(tmp_path), "seed": 1, "model": {"student": {"_target_": "qrl.models.MLP"}}}
    )
    with pytest.raises(ConfigError) as info:
        start_run(other)
    message = str(info.value)
    assert "model.student._target_: SmallCNN -> MLP" in message and "seed: 0 -> 1" in message
    assert "overwrite=true" in message and "\n" not in message
    assert _snapshot(run_dir) == before  # neither metrics.json nor config.yaml touched


def test_a_refused_cli_rerun_leaves_every_file_of_the_finished_run_alone(tmp_path: Path) -> None:
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "qrl.distill", *args, f"hydra.run.dir={tmp_path}"],
            capture_output=True,
            text=True,
            timeout=300,
        )

    assert cli(*QUICK).returncode == 0
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    refused = cli(*QUICK, "seed=1")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"error: {tmp_path} holds a run of another config (data.seed: 0 -> 1; seed: 0 -> 1): "
        "rerun with the same config to resume it, choose another out dir, or pass overwrite=true"
    ]
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_keys_that_cannot_change_results_still_resume(tmp_path: Path) -> None:
    run_dir, cfg = _finished(tmp_path)
    again = OmegaConf.merge(cfg, {"progress": False, "logger": {"wandb": True}, "resume": True})
    start_run(again)  # no error: the same run, resumed
    assert not (run_dir / METRICS_FILE).exists()  # unfinished until the rerun ends


def test_runs_from_before_victim_model_resume_as_the_cnn(tmp_path: Path) -> None:
    def rerun(out: Path, model: str) -> None:
        victim = {"run": None, "model": model}
        start_run(OmegaConf.create({"out": str(out), "seed": 0, "resume": True, "victim": victim}))

    for name in ("a", "b"):
        _finished(tmp_path / name, victim={"run": None})  # saved before victim.model existed
    rerun(tmp_path / "a", "cnn")  # the same run: resumed
    with pytest.raises(ConfigError, match=r"victim.model: cnn -> mlp"):
        rerun(tmp_path / "b", "mlp")


def test_searches_from_before_bits_moved_resume_under_bits_set_and_budget(tmp_path: Path) -> None:
    old_space = {"mode": "bits", "bits_set": [2, 4, 8], "bits_budget": 4.0}
    for name in ("a", "b"):
        _finished(tmp_path / name, task="search", space=old_space)  # the old names

    def rerun(out: Path, budget: float) -> None:
        bits = {"set": [2, 4, 8], "budget": budget}
        cfg = {"out": str(out), "seed": 0, "task": "search", "space": {"mode": "bits"}}
        start_run(OmegaConf.create({**cfg, "resume": True, "bits": bits}))

    rerun(tmp_path / "a", 4.0)  # the same run under the new names: resumed
    with pytest.raises(ConfigError, match=r"bits.budget: 4.0 -> 3.0"):
        rerun(tmp_path / "b", 3.0)


def test_overwrite_starts_the_other_config_afresh(tmp_path: Path) -> None:
    run_dir, _ = _finished(tmp_path)
    other = OmegaConf.create({"out": str(tmp_path), "seed": 5, "resume": True, "overwrite": True})
    start_run(other)
    assert other.resume is False  # nothing of the other config's run is reused
    assert OmegaConf.load(run_dir / CONFIG_FILE).seed == 5
    assert not (run_dir / METRICS_FILE).exists()


def test_distill_into_a_finished_dir_of_another_model_is_refused(
    tiny_run: Path, tmp_path: Path
) -> None:
    before = _snapshot(tiny_run)
    with pytest.raises(ConfigError, match=r"model.student._target_: SmallCNN -> MLP"):
        quick = [o for o in QUICK if not o.startswith("model.")]
        distill.run(load_config("distill", [*quick, "model=mlp", f"out={tiny_run}"]))
    assert _snapshot(tiny_run) == before


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("teacher.epochs=-1", "teacher.epochs must be >= 1"),
        ("student.batch_size=0", "student.batch_size must be >= 1"),
        ("student.tau=0", "student.tau"),
        ("data.train_limit=0", r"data.train_limit \(or null: all\) must be >= 1"),
    ],
)
def test_bad_distill_values_fail_before_the_finished_run_is_touched(
    tiny_run: Path, override: str, match: str
) -> None:
    before = _snapshot(tiny_run)
    with pytest.raises(ConfigError, match=match):
        distill.run(load_config("distill", [*QUICK, override, f"out={tiny_run}"]))
    assert _snapshot(tiny_run) == before  # metrics.json survives a failed rerun


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("budget.evaluations=abc", "budget.evaluations must be int >= 1, got 'abc'"),
        ("env.batch_size=0", "env.batch_size must be >= 1, got 0"),
        ("eval.ci_level=1.5", r"eval.ci_level must be in \(0, 1\), got 1.5"),
        ("eval.samples=2.5", "eval.samples must be int >= 1, got 2.5"),
    ],
)
def test_bad_search_values_fail_before_the_dir_is_touched(
    tiny_run: Path, tmp_path: Path, override: str, match: str
) -> None:
    out = tmp_path / "search"
    cfg = [f"victim.run={tiny_run}", f"out={out}", *FAST_SEARCH, override]
    with pytest.raises(ConfigError, match=match):
        search.run(load_config("search", cfg))
    assert not out.exists()


def test_quant_eval_without_a_run_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="set run="):
        quant_eval.run(load_config("quant_eval", [f"out={tmp_path / 'q'}"]))
    assert not (tmp_path / "q").exists()


def test_a_killed_search_reruns_with_exactly_the_budget_of_rows(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "search"
    cfg = [f"victim.run={tiny_run}", f"out={out}", "budget.evaluations=12", *FAST_SEARCH]
    real = searching.evaluate_best

    def killed(*args: object, **kwargs: object) -> object:
        raise KeyboardInterrupt

    monkeypatch.setattr(searching, "evaluate_best", killed)  # killed after the whole search ran
    with pytest.raises(KeyboardInterrupt):
        search.run(load_config("search", cfg))
    monkeypatch.setattr(searching, "evaluate_best", real)
    search.run(load_config("search", cfg))
    rows = (out / "log.csv").read_text().splitlines()[1:]
    per_key: dict[str, int] = {}
    for row in rows:
        key = row.split(",")[1]
        per_key[key] = per_key.get(key, 0) + 1
    # 11 search evaluations are logged; the 12th re-scores the chosen policy (selection).
    assert per_key and set(per_key.values()) == {11}, per_key
    assert len(list((out / "tb").glob("events.*"))) == 1
    metrics = json.loads((out / METRICS_FILE).read_text())
    assert metrics["search/evaluations"] == 11 and metrics["evaluations"] == 12


def test_finished_run_of_needs_metrics_json_and_the_same_result_config(tmp_path: Path) -> None:
    from qrl.runs import finished_run_of

    run_dir, cfg = _finished(tmp_path, budget={"evaluations": 6})
    assert finished_run_of(run_dir, OmegaConf.merge(cfg, {"progress": False, "out": "elsewhere"}))
    assert not finished_run_of(run_dir, OmegaConf.merge(cfg, {"budget": {"evaluations": 8}}))
    (run_dir / METRICS_FILE).unlink()  # unfinished
    assert not finished_run_of(run_dir, cfg)
    assert not finished_run_of(tmp_path / "nothing", cfg)


def test_a_reproduce_dir_saved_with_plus_stage_keys_resumes_without_them(tmp_path: Path) -> None:
    """Run dirs made with `+pairs.train.rounds=2` resume under `pairs.train.rounds=2`."""
    old = load_config("reproduce", [f"out={tmp_path}", "+pairs.train.rounds=2", "+distill.seed=1"])
    start_run(old)
    new = load_config("reproduce", [f"out={tmp_path}", "pairs.train.rounds=2", "distill.seed=1"])
    start_run(new)  # no ConfigError: the same run
    with pytest.raises(ConfigError, match=r"pairs.train.rounds: 2 -> 3"):
        start_run(load_config("reproduce", [f"out={tmp_path}", "pairs.train.rounds=3"]))


def test_a_pair_is_another_config_only_when_what_it_reads_changes() -> None:
    from qrl.runs import _result_config

    def pair(kind: str, *overrides: str, student_class: str | None = "MLP") -> dict:
        cfg = load_config("pairs", [f"kind={kind}", "victim.model=mlp", "out=x", *overrides])
        plain = OmegaConf.to_container(cfg, resolve=False)
        plain.pop("out")
        if student_class is not None:
            plain["victim"]["student_class"] = student_class
        return plain

    base = _result_config(pair("detrimental"))
    # another model's entry of a per-model map, or the record of the class: the same run
    assert _result_config(pair("detrimental", "train.away_weights.SmallCNN=0.1")) == base
    assert _result_config(pair("detrimental", student_class=None)) == base  # cached MLP victim
    # its own entry, or a detrimental term it reads: another config
    assert _result_config(pair("detrimental", "train.away_weights.MLP=0.1")) != base
    assert _result_config(pair("detrimental", "train.keep_floor=4")) != base
    robust = _result_config(pair("robust"))
    assert _result_config(pair("robust", "train.keep_floor=4", "train.twin=a")) == robust
    assert _result_config(pair("robust", "train.rounds=7")) != robust
    # a detrimental pair saved before train.twin_stretch existed ran its default, which a
    # student class without its own (a user's) still reads; the MLP now has its own noise
    before = pair("detrimental", student_class="UsersNet")
    before["train"].pop("twin_stretch")
    before["train"].pop("input_noise")
    assert _result_config(before) == _result_config(pair("detrimental", student_class="UsersNet"))
    mlp_before = pair("detrimental")
    mlp_before["train"].pop("input_noise")
    assert _result_config(mlp_before) != base
    assert _result_config(pair("detrimental", "train.twin_stretch=per_input")) != base
    assert _result_config(pair("detrimental", "train.input_noise=0.1")) != base
    assert _result_config(pair("robust", "train.input_noise=0.05")) == robust
    # ... and before train.away_bits and detrimental_rounds_factor: the policy's bits and
    # train.rounds, which the MLP's detrimental pair no longer trains for
    older = pair("detrimental")
    older["train"].pop("away_bits")
    older["train"].pop("detrimental_rounds_factor")
    assert _result_config(older) != base
    assert _result_config(pair("detrimental", "train.away_bits=policy")) != base
    assert _result_config(pair("robust", "train.detrimental_rounds_factor.MLP=7")) == robust
    wide = pair("detrimental", "victim.model=resnet18", student_class="ResNet18")
    wide_older = pair("detrimental", "victim.model=resnet18", student_class="ResNet18")
    wide_older["train"].pop("detrimental_rounds_factor")
    assert _result_config(wide_older) == _result_config(wide)  # no factor of its own: it stands
    wide_older["train"].pop("away_bits")
    assert _result_config(wide_older) != _result_config(wide)  # it has its own away_bits now
    # ... and before train.twin_spare: the twin's bits on the image the network sees
    spare_older = pair("detrimental")
    spare_older["train"].pop("twin_spare")
    spare_older["train"].pop("twin_spares")
    assert _result_config(spare_older) == base
    assert _result_config(pair("detrimental", "train.twin_spare=either")) != base
    assert _result_config(pair("robust", "train.twin_spare=either")) == robust
    # `auto` settings compare by the value they read: an MLP saved with its own values
    # stands, and one saved with the fallbacks (before its own defaults) trains again; so does
    # the CNN, which has its own now too
    mlp_own = (
        "train.keep_weight=1.5",
        "train.input_noise=0.05",
        "train.twin_stretch=least_starved",
        "train.away_bits=assigned",
    )
    assert _result_config(pair("detrimental", *mlp_own)) == base
    explicit = (
        "train.keep_weight=1.0",
        "train.input_noise=0.0",
        "train.twin_stretch=least_starved",
    )
    assert _result_config(pair("detrimental", *explicit)) != base
    cnn = pair("detrimental", "victim.model=cnn", student_class="SmallCNN")
    cnn_before = pair("detrimental", "victim.model=cnn", *explicit, student_class="SmallCNN")
    assert _result_config(cnn_before) != _result_config(cnn)  # it has its own now
    own = (
        "train.keep_weight=1.5",
        "train.input_noise=0.05",
        "train.twin_stretch=per_input",
        "train.twin_spare=either",
    )
    cnn_own = pair("detrimental", "victim.model=cnn", *own, student_class="SmallCNN")
    assert _result_config(cnn_own) == _result_config(cnn)
    assert _result_config(pair("detrimental", "train.keep_weights.SmallCNN=9")) == base
