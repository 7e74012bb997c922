"""The experiment scripts: their shared helpers, and that each one starts."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from qrl.runs import METRICS_FILE
from qrl.sweeps import write_overrides

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _common():
    spec = importlib.util.spec_from_file_location("common", EXPERIMENTS / "common.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_section_is_replaced_in_place_and_the_rest_kept(tmp_path, monkeypatch) -> None:
    common = _common()
    readme = tmp_path / "README.md"
    readme.write_text("# Experiments\n\nhand-written\n")
    monkeypatch.setattr(common, "README", readme)
    monkeypatch.setattr(common, "README_LOCK", tmp_path / "readme.lock")
    common.update_readme("claim", "first numbers")
    common.update_readme("other", "other numbers")
    common.update_readme("claim", "second numbers")
    text = readme.read_text()
    assert text.startswith("# Experiments\n\nhand-written\n")
    assert "first numbers" not in text and text.count("second numbers") == 1
    assert text.index("second numbers") < text.index("other numbers")  # kept its place


def _job(root: Path, name: str, overrides: list[str], finished: bool = True) -> None:
    job = root / name
    job.mkdir(parents=True)
    write_overrides(job, overrides)  # as a sweep's job writes them
    if finished:
        (job / METRICS_FILE).write_text(json.dumps({"seed": 0, "drop": 0.5}))


def test_an_experiment_picks_exactly_the_runs_its_overrides_made(tmp_path: Path) -> None:
    common = _common()
    # Hydra writes values its own way (3.5, False); the script asked for 3.50 and seed 0.
    _job(tmp_path, "a", ["bits.budget=3.5", "kind=robust", "seed=0", "progress=False"])
    _job(tmp_path, "b", ["bits.budget=4.0", "kind=robust", "seed=0", "progress=False"])
    _job(tmp_path, "c", ["bits.budget=3.5", "kind=robust", "seed=0", "train.rounds=5"])
    _job(tmp_path, "d", ["bits.budget=3.5", "kind=robust", "seed=1"], finished=False)
    scanned = common.scan(tmp_path, ["bits.budget=3.50", "kind=robust", "seed=0,1"])
    assert [Path(r["run_dir"]).name for r in scanned["finished"]] == ["a"]  # not b, not c
    assert [Path(r["run_dir"]).name for r in scanned["unfinished"]] == ["d"]
    with pytest.raises(SystemExit, match="no run under"):
        common.scan(tmp_path, ["bits.budget=6.0", "kind=robust", "seed=0"])


def test_keys_a_script_sets_cannot_be_overridden_and_commands_are_shell_safe() -> None:
    common = _common()
    with pytest.raises(SystemExit, match="seed is set by this script; use --seeds"):
        common.check_extra(["train.rounds=5", "seed=3"], common.PAIR_KEYS)
    command = [
        sys.executable,
        "-m",
        "qrl.pairs",
        "hydra.sweep.subdir=${hydra.job.override_dirname}",
    ]
    assert common.shown(command) == (
        "python -m qrl.pairs 'hydra.sweep.subdir=${hydra.job.override_dirname}'"
    )
    line = common.stamp()
    assert line.startswith("Generated on ") and "CPU cores" in line and "torch" in line


class _Launched(Exception):
    """Raised in place of a script's real work: what it launched is in `args[0]`."""


def _load_script(script: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(EXPERIMENTS))  # how `python experiments/x.py` finds common
    spec = importlib.util.spec_from_file_location(script, EXPERIMENTS / f"{script}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _overrides(command: list[str]) -> tuple[str, dict[str, str]]:
    """(the qrl task a command runs, its task overrides as {key: value})."""
    assert command[:2] == [sys.executable, "-m"] and command[2].startswith("qrl."), command
    task = command[2].removeprefix("qrl.")
    assert importlib.util.find_spec(f"qrl.{task}") is not None, task
    values = dict(arg.split("=", 1) for arg in command[3:] if arg != "-m")
    return task, {k: v for k, v in values.items() if not k.startswith("hydra.")}


def _check_composes(task: str, overrides: dict[str, str]) -> None:
    """Every value of a sweep is a config the task accepts: each option of a group names a
    file, and the first value of each key composes (a stale key or option fails here)."""
    from qrl.config import CONF_DIR, load_config

    first = []
    for key, value in overrides.items():
        options = [value] if value.startswith("[") else value.split(",")
        group = CONF_DIR / key.lstrip("+")
        if group.is_dir():
            for option in options:
                assert (group / f"{option}.yaml").is_file(), f"{key}={option}"
        first.append(f"{key}={options[0]}")
    load_config(task, [*first, "out=unused"])


# Per script: tiny arguments, and the overrides its sweep must carry (the arguments, in Hydra's
# words). The sweeps are where the scripts' work happens; the reports are tested above.
SWEEPS: dict[str, tuple[list[str], dict[str, str]]] = {
    "agents_vs_baselines": (
        ["--agents", "random,es", "--seeds", "7", "--evaluations", "12"],
        {"agent": "random,es", "seed": "7", "budget.evaluations": "12", "env.reference": "student"},
    ),
    "honest_selection": (
        ["--agents", "es", "--seeds", "3,4", "--evaluations", "20", "--reference", "teacher"],
        {"agent": "es", "seed": "3,4", "budget.evaluations": "20", "env.reference": "teacher"},
    ),
    "pairs_table": (
        ["--models", "mlp", "--budgets", "3.0", "--seeds", "4"],
        {"victim.model": "mlp", "bits.budget": "3.0", "kind": "robust", "seed": "4"},
    ),
    "drop_vs_budget": (
        ["--model", "mlp", "--budgets", "3.0,5.0", "--seeds", "4"],
        {"victim.model": "mlp", "bits.budget": "3.0,5.0", "seed": "4"},
    ),
    "cross_architecture": (
        ["--cases", "mlp:3.0", "--seeds", "4"],
        {"victim.model": "mlp", "bits.budget": "3.0", "kind": "robust", "seed": "4"},
    ),
    "granularity": (
        ["--model", "mlp", "--budget", "5.0", "--seeds", "4"],
        {"victim.model": "mlp", "bits.budget": "5.0", "kind": "robust", "seed": "4"},
    ),
    "search_benchmark": (  # the hard family runs first, with the presets tuned on it
        ["members.count=2"],
        {
            "members.count": "2",
            "progress": "false",
            "members.family": "hard",
            "agents": "[random,es,ppo_narrow,sac_narrow]",
        },
    ),
}
IN_PROCESS = {
    "input_pairs_table",
    "planted_vulnerability",
    "policy_alone",
    "simulator_fidelity",
    "tune_agents",
}
SCRIPTS = sorted(p.stem for p in EXPERIMENTS.glob("*.py") if p.name != "common.py")


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_experiment_script_starts(
    script: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    module = _load_script(script, monkeypatch)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", "--help"])
    with pytest.raises(SystemExit) as stopped:
        module.main()
    assert stopped.value.code == 0
    assert capsys.readouterr().out.startswith("usage:")
    assert script in SWEEPS or script in IN_PROCESS, f"{script}: add it to SWEEPS or IN_PROCESS"


@pytest.mark.parametrize("script", sorted(SWEEPS))
def test_every_sweep_script_launches_its_arguments_as_a_valid_sweep(
    script: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _load_script(script, monkeypatch)
    monkeypatch.chdir(tmp_path)  # the scripts enter the repository; the test's cwd comes back

    def launched(command: list[str], sweep: bool = True) -> None:
        raise _Launched(command)

    monkeypatch.setattr(module.common, "run", launched)
    args, expected = SWEEPS[script]
    monkeypatch.setattr(sys, "argv", [f"{script}.py", "--out", str(tmp_path / "out"), *args])
    with pytest.raises(_Launched) as stopped:
        module.main()
    command = stopped.value.args[0]
    task, overrides = _overrides(command)
    assert {k: overrides.get(k) for k in expected} == expected
    _check_composes(task, overrides)
    if task in ("search", "pairs"):  # a multirun, one job dir per configuration
        assert "-m" in command[3:] and any(a.startswith("hydra.sweep.dir=") for a in command)


def test_the_fidelity_script_runs_the_fidelity_benchmark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _load_script("simulator_fidelity", monkeypatch)
    monkeypatch.chdir(tmp_path)

    def launched(command: list[str], sweep: bool = True) -> None:
        raise _Launched(command)

    monkeypatch.setattr(module.common, "run", launched)
    monkeypatch.setattr(sys, "argv", ["simulator_fidelity.py", "--out", str(tmp_path)])
    with pytest.raises(_Launched) as stopped:
        module.main()
    python, benchmark, *rest = stopped.value.args[0]
    assert python == sys.executable and Path(benchmark).is_file()
    assert Path(benchmark).name == "fidelity.py" and rest == [
        "--out",
        str(tmp_path / "fidelity.md"),
    ]
    assert "--out" in Path(benchmark).read_text()  # an option the benchmark takes


def test_the_planted_script_audits_each_agent_and_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qrl.config import load_config

    module = _load_script("planted_vulnerability", monkeypatch)
    calls: list[dict] = []

    def audit(model, data, **kwargs):
        calls.append(kwargs)
        if len(calls) == 4:  # two agents x two seeds
            raise _Launched(calls)
        return type("Result", (), {"gap": 0.5 if kwargs["agent"] == "es" else 0.0})()

    monkeypatch.setattr(module, "planted_digits_mlp", lambda seed: ("model", "data"))
    monkeypatch.setattr(module, "audit", audit)
    argv = ["--evaluations", "30", "--seeds", "2", "--agents", "es,random", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", ["planted_vulnerability.py", *argv])
    with pytest.raises(_Launched):
        module.main()
    assert [(c["agent"], c["seed"], c["evaluations"]) for c in calls] == [
        ("es", 0, 30),
        ("es", 1, 30),
        ("random", 0, 30),
        ("random", 1, 30),
    ]
    assert len({c["out"] for c in calls}) == 4 and all(tmp_path in c["out"].parents for c in calls)
    quant = calls[0]["quant"]
    assert quant.act_bits == 4 and quant.act_granularity == "per_tensor"  # what the unit breaks
    load_config("search", [*calls[0]["overrides"], "out=unused"])  # the overrides compose


def test_the_policy_script_trains_a_frozen_network_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _load_script("policy_alone", monkeypatch)
    distilled: list = []

    def pairs_run(cfg):
        raise _Launched(cfg)

    monkeypatch.setattr(module, "distill", SimpleNamespace(run=distilled.append))
    monkeypatch.setattr(module, "pairs", SimpleNamespace(run=pairs_run))
    with pytest.raises(_Launched) as stopped:
        module.main(["--out", str(tmp_path), "--seed", "3"])
    (distill_cfg,) = distilled  # no distill run given: it distils one first
    assert distill_cfg.out == str(tmp_path / "distill") and distill_cfg.seed == 3
    cfg = stopped.value.args[0]
    assert cfg.kind == "detrimental" and cfg.train.net_steps == 0  # the network stays frozen
    assert cfg.victim.run == str(tmp_path / "distill") and cfg.seed == 3
    assert cfg.out == str(tmp_path / "policy")


def test_the_tuning_script_searches_tuning_members_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _load_script("tune_agents", monkeypatch)
    asked: list[int] = []

    def members(n: int) -> list[str]:
        asked.append(n)
        return [f"member{i}" for i in range(n)]

    def run_one(member, agent, seed, budget, options):
        raise _Launched(member, agent, seed, budget, options)

    monkeypatch.setattr(module, "tuning_members", members)
    monkeypatch.setattr(module, "run_one", run_one)
    argv = ["--agents", "ppo", "--trials", "1", "--members", "2", "--seeds", "3", "--budget", "50"]
    monkeypatch.setattr(sys, "argv", ["tune_agents.py", *argv, "--out", str(tmp_path)])
    with pytest.raises(_Launched) as stopped:
        module.main()
    member, agent, seed, budget, options = stopped.value.args
    assert asked == [2] and member == "member0" and seed == 3 and budget == 50
    assert agent.name == "ppo" and "model" in agent and options


def test_the_tuning_script_runs_an_enqueued_trial_after_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _load_script("tune_agents", monkeypatch)
    tried: list[tuple[float, int, object]] = []

    def run_one(member, agent, seed, budget, options):
        tried.append((agent.model.gamma, agent.model.n_steps, agent.search.relative_step))
        return module.RunResult("ppo", member, seed, None, budget, 0.0, 0.0)

    monkeypatch.setattr(module, "hard_tuning_members", lambda n: ["member0"])
    monkeypatch.setattr(module, "run_one", run_one)
    pilot = {"gamma": 0.0, "n_steps": 32, "relative_step": "0.5", "warmup": 16}
    argv = ["--agents", "ppo", "--trials", "2", "--members", "1", "--budget", "50"]
    argv += ["--family", "hard", "--enqueue", "ppo:" + json.dumps(pilot)]
    argv += ["--enqueue", 'sac:{"gamma": 0.9}']  # another agent's: not run for ppo
    monkeypatch.setattr(sys, "argv", ["tune_agents.py", *argv, "--out", str(tmp_path)])
    assert module.main() == 0
    defaults = module.agent_config("ppo")
    assert tried[0][:2] == (defaults.model.gamma, defaults.model.n_steps)  # the preset first
    assert tried[1] == (0.0, 32, 0.5)  # then the enqueued trial
    assert len(json.loads((tmp_path / "tuned.json").read_text())["ppo"]["trials"]) == 2
    assert module.algorithm("ppo_narrow") == "ppo" and module.algorithm("sac_narrow") == "sac"
    with pytest.raises(SystemExit, match="not AGENT:JSON"):
        module.enqueued(["ppo:{gamma: 0}"])


def test_the_tuning_objective_ranks_every_find_above_every_miss_and_closer_misses_higher(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = _load_script("tune_agents", monkeypatch)

    def cost(found_at: int | None, best: float | None) -> float:
        result = module.RunResult("ppo", "m", 0, found_at, found_at or 1000, 0.0, best)
        return module.run_cost(result, 1000)

    assert cost(8, 0.9) == 3.0  # log2 of the evaluations to failure
    assert cost(1000, 0.0) < cost(None, 1.0) < cost(None, 0.4) < cost(None, 0.0)
    assert cost(None, 0.0) == cost(None, -0.5) == cost(None, None)  # penalties: no reward


# Slow (about 20 s): the pairs' training and Stage C are checked in `make test` by
# tests/test_input_pairs.py; this is the script's own table and section around them.
@pytest.mark.slow
def test_the_input_pairs_script_trains_both_kinds_audits_and_writes_its_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _load_script("input_pairs_table", monkeypatch)
    readme = tmp_path / "README.md"
    readme.write_text("# Experiments\n")
    monkeypatch.setattr(module.common, "README", readme)
    monkeypatch.setattr(module.common, "README_LOCK", tmp_path / "readme.lock")
    tiny = [
        "train.rounds=1",
        "train.net_steps=1",
        "train.settle_steps=2",
        "train.evaluations_per_round=2",
        "train.eval_batch=8",
        "train.batch_size=8",
        "agent.model.n_steps=2",
        "agent.model.batch_size=2",
        "eval.random=2",
        "eval.audit.evaluations=4",
    ]
    argv = ["--runs", "mlp=0", "--audit-agents", "random", "--audit-evaluations", "4"]
    monkeypatch.setattr(sys, "argv", ["input_pairs_table.py", *argv, "--out", str(tmp_path), *tiny])
    assert module.main() == 0
    for kind in ("detrimental", "robust"):  # both pairs, through the CLI
        assert (tmp_path / "mlp" / "s0" / kind / "pair.json").is_file()
    audited = json.loads((tmp_path / "mlp" / "s0" / "audit_random" / "ort_drop.json").read_text())
    assert -1.0 <= audited["drop_ort"] <= 1.0
    section = readme.read_text()
    assert "<!-- input_pairs:start -->" in section
    assert section.count("| mlp ") == 3  # one row in each table: detrimental, robust, audits


def test_the_cross_architecture_table_pairs_each_seed_s_twins_and_groups_over_seeds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = _load_script("cross_architecture", monkeypatch)

    def record(model: str, budget: float, seed: int, kind: str) -> dict:
        config = {"victim": {"model": model}, "bits": {"budget": budget}, "seed": seed}
        return {"config": {**config, "kind": kind}, "run_dir": f"{model}-{budget}-{seed}-{kind}"}

    runs = [record("mlp", 4.0, s, k) for s in (0, 1) for k in module.KINDS]
    runs.append(record("cnn", 4.0, 0, "detrimental"))  # its twin is missing
    assert module.pair_dir(runs, "mlp", 4.0, 1, "robust") == Path("mlp-4.0-1-robust")
    assert module.pair_dir(runs, "mlp", 3.0, 1, "robust") is None
    assert module.found(runs, "mlp", 4.0, 0) and not module.found(runs, "cnn", 4.0, 0)
    columns = [c[0] for c in module.COLUMNS]
    rows = [
        {"model": "mlp", "budget": 4.0, "seed": s, **dict.fromkeys(columns, v)}
        for s, v in ((0, 0.70), (1, 0.74))
    ]
    table = module.summary_table(rows)
    body = [line for line in table.splitlines() if line.startswith("| mlp")]
    assert len(body) == 1
    cells = [c.strip() for c in body[0].split("|")[1:-1]]
    assert cells[:3] == ["mlp", "4.0", "2"]
    assert cells[3:] == ["72.00 ± 2.83"] * len(columns)  # mean ± std over seeds, in points
    per_seed = [line for line in module.per_seed_table(rows).splitlines() if "| mlp" in line]
    assert [[c.strip() for c in line.split("|")[1:5]] for line in per_seed] == [
        ["mlp", "4.0", "0", "70.00"],
        ["mlp", "4.0", "1", "74.00"],
    ]


def test_a_pair_sweep_trains_the_robust_pairs_then_each_detrimental_one_against_its_twin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _load_script("pairs_table", monkeypatch)
    import common

    commands: list[list[str]] = []
    monkeypatch.setattr(common, "run", lambda command, sweep=True: commands.append(command))
    monkeypatch.setattr(common, "scan", lambda root, overrides: {"finished": [], "failed": []})
    command, _ = common.pair_sweep(["mlp"], ["3.0"], ["4"], root=tmp_path)
    assert commands[0] == command
    (_, robust), (_, detrimental) = (_overrides(c) for c in commands)
    assert robust["kind"] == "robust" and detrimental["kind"] == "detrimental"
    assert detrimental["train.twin"] == "${robust_twin:}"
    assert {k: v for k, v in robust.items() if k != "kind"} == {
        k: v for k, v in detrimental.items() if k not in ("kind", "train.twin")
    }
    for c in commands:  # job dirs named by their overrides, as ${robust_twin:} reads them
        assert "hydra.sweep.subdir=${hydra.job.override_dirname}" in c
        assert f"hydra.sweep.dir={tmp_path}" in c
    commands.clear()
    again, _ = common.pair_sweep(["mlp"], ["3.0"], ["4"], root=tmp_path, report_only=True)
    assert again == command and not commands  # the same command named, nothing trained


def test_the_hard_targets_judge_every_ppo_and_sac_preset_that_ran(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = _load_script("search_benchmark", monkeypatch)

    def agent(name: str, found: float, at_200: float, evals: float, above: bool) -> dict:
        key = f"bench/{name}"
        return {
            f"{key}/runs": 60,
            f"{key}/found@1000": found,
            f"{key}/found@1000_ci_low": found - 0.1,
            f"{key}/found@1000_ci_high": found + 0.1,
            f"{key}/found@200": at_200,
            f"{key}/found@200_ci_low": at_200 - 0.1,
            f"{key}/found@200_ci_high": at_200 + 0.1,
            f"{key}/evals_to_random_found": evals,
            f"{key}/evals_to_random_found_ci_low": evals / 2,
            f"{key}/evals_to_random_found_ci_high": evals * 2,
            f"{key}/above_random_at_200": above,
        }

    metrics = {
        **agent("random", 0.2, 0.05, 1000, False),
        **agent("es", 0.95, 0.6, 120, True),
        **agent("ppo_narrow", 0.85, 0.5, 150, True),
        **agent("sac_narrow", 0.85, 0.25, 400, False),
    }
    lines = module.hard_targets(metrics, "es", 1000, 200)
    assert lines[0].endswith("**met**") and lines[1].endswith("**met**")  # random, es
    (ppo,) = [line for line in lines if line.startswith("- ppo_narrow:")]
    (sac,) = [line for line in lines if line.startswith("- sac_narrow:")]
    assert ppo.endswith("**met**") and "in 150 [75, 300] evaluations" in ppo
    assert sac.endswith("**not met**") and "(within 200: no)" in sac
    assert len(lines) == 4  # no "ppo: not run" where a PPO preset ran
    assert module.learning_agents({"bench/random/runs": 60}) == ["ppo", "sac"]


def test_the_hard_family_runs_the_agents_a_user_chooses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _load_script("search_benchmark", monkeypatch)
    monkeypatch.chdir(tmp_path)

    def launched(command: list[str], sweep: bool = True) -> None:
        raise _Launched(command)

    monkeypatch.setattr(module.common, "run", launched)
    argv = ["--out", str(tmp_path / "out"), "--hard-overrides", "agents=[random,ppo]"]
    monkeypatch.setattr(sys, "argv", ["search_benchmark.py", *argv])
    with pytest.raises(_Launched) as stopped:
        module.main()
    agents = [a for a in stopped.value.args[0] if a.startswith("agents=")]
    assert agents == ["agents=[random,ppo]"]  # not the narrow presets beside it
