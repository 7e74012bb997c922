"""The config schema (qrl.schema): each typed node refuses a value of the wrong type and one out
of range in one line with exit code 2, and the composed configs are the yaml's values."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from qrl.config import CONF_DIR, checked_argv, load_config
from qrl.errors import ConfigError
from qrl.schema import (
    SCHEMAS,
    Bits,
    CrossStage,
    Env,
    PairTrain,
    SearchStage,
    Select,
    Space,
    validate_reproduce,
    validate_search,
)
from tests.conftest import run_at_once

# (schema, task, a value of the wrong type, a value out of range, the start of the range line)
BAD = [
    (Space, "search", "space.class_mix=maybe", "space.corruptions=[fog]", "space.corruptions"),
    (Env, "search", "env.batch_size=abc", "env.validity_floor=1.5", "env.validity_floor must"),
    (Bits, "pairs", "bits.budget=abc", "bits.budget=9", "bits.budget must be >= 2"),
    (Bits, "search", "bits.set=[a,2]", "space=bits bits.set=[1,4]", "bits.set must be"),
    (Select, "search", "select.candidates=2.5", "select.fraction=1.5", "select.fraction"),
    (PairTrain, "pairs", "train.rounds=abc", "train.alpha=2", "train.alpha must be"),
    (SearchStage, "reproduce", "search.evaluations=x", "search.evaluations=0", "search.evalu"),
    (CrossStage, "reproduce", "cross.pattern_limit=1.5", "cross.pattern_samples=0", "cross.pat"),
    (PairTrain, "reproduce", "pairs.train.rounds=abc", "pairs.train.tau=0", "train.tau must"),
]


def _main(
    task: str, argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> tuple[Any, list[str]]:
    """`python -m qrl.<task> *argv` in this process (its `main`, as the command line calls it):
    the exit code and the lines on stderr."""
    main = importlib.import_module(f"qrl.{task}").main
    monkeypatch.setattr(sys, "argv", [f"qrl/{task}.py", *argv])
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main()
    return info.value.code, capsys.readouterr().err.strip().splitlines()


def test_every_schema_has_a_bad_type_and_a_bad_range_here() -> None:
    assert {schema for schema, *_ in BAD} == set(SCHEMAS.values())


@pytest.mark.parametrize(("schema", "task", "wrong_type", "out_of_range", "starts"), BAD)
def test_a_bad_type_or_range_of_every_schema_is_one_line_exit_2_and_writes_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    schema: type,
    task: str,
    wrong_type: str,
    out_of_range: str,
    starts: str,
) -> None:
    key = wrong_type.split("=")[0]
    for args, start in ((wrong_type, f"{key} must be "), (out_of_range, starts)):
        argv = [*args.split(), f"hydra.run.dir={tmp_path / 'x'}"]
        code, lines = _main(task, argv, monkeypatch, capsys)
        assert code == 2 and len(lines) == 1, (args, lines)
        assert lines[0].startswith(f"error: {start}"), (args, lines)
        assert not (tmp_path / "x").exists()  # no run dir


def test_the_command_line_itself_exits_2_with_one_line(tmp_path: Path) -> None:
    commands = [
        [sys.executable, "-m", "qrl.pairs", "train.rounds=abc", f"hydra.run.dir={tmp_path}/a"],
        [sys.executable, "-m", "qrl.pairs", "train.alpha=2", f"hydra.run.dir={tmp_path}/b"],
    ]
    expected = ["error: train.rounds must be int, got 'abc'", "error: train.alpha must be >= 0"]
    for result, start in zip(run_at_once(*commands, timeout=300), expected, strict=True):
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines()[0].startswith(start), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("task", "override", "message"),
    [
        ("search", "env.n_envs=true", "env.n_envs must be int, got True"),
        ("search", "bits.budget=null", "bits.budget must be float, got None"),
        ("reproduce", "search.overrides.env.batch_size=x", "search.overrides.env.batch_size"),
        ("reproduce", "pairs.train.range_grad=maybe", "pairs.train.range_grad must be true or"),
        # OmegaConf sets a scalar for a list of a node typed after `_self_`: the checker says it
        ("search", "bits.set=4", "bits.set must be a list of int, got 4"),
        ("reproduce", "search.agents=ppo", "search.agents must be a list of str, got 'ppo'"),
    ],
)
def test_a_value_of_the_wrong_type_is_one_line_before_hydra(
    task: str, override: str, message: str
) -> None:
    checks = [lambda: checked_argv(task, [override])]
    if "list" not in message:  # Hydra refuses it: load_config says it in one line too
        checks.append(lambda: load_config(task, [override]))
    for check in checks:
        with pytest.raises(ConfigError) as info:
            check()
        assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_validate_refuses_a_scalar_for_a_list() -> None:
    with pytest.raises(ConfigError, match=r"bits.set must be a list, got 4"):
        validate_search(load_config("search", ["space=bits", "bits.set=4"]))
    with pytest.raises(ConfigError, match=r"search.agents must be a list, got 'ppo'"):
        validate_reproduce(load_config("reproduce", ["search.agents=ppo"]))


def test_a_sweep_checks_each_of_its_values() -> None:
    assert checked_argv("search", ["-m", "env.batch_size=16,32"]) == ["-m", "env.batch_size=16,32"]
    with pytest.raises(ConfigError, match=r"env.batch_size must be int, got 'x'"):
        checked_argv("search", ["-m", "env.batch_size=16,x"])


@pytest.mark.parametrize(
    ("node", "schema", "values", "message"),
    [
        ("space", Space, {"mode": "colour"}, "space.mode must be one of"),
        ("bits", Bits, {"set": [2, 9]}, r"bits.set must be a non-empty list of bit-widths in 2..8"),
        ("bits", Bits, {"set": []}, "bits.set must be a non-empty list"),
        ("select", Select, {"split": "dev"}, "select.split must be one of"),
        ("env", Env, {"reference": "self"}, "env.reference must be one of"),
        ("env", Env, {"n_envs": 0}, "env.n_envs must be >= 1"),
    ],
)
def test_validate_refuses_values_out_of_range_in_one_line(
    node: str, schema: Any, values: dict[str, Any], message: str
) -> None:
    cfg = load_config("search", ["space=bits"])
    schema.validate(cfg[node])  # the config's own values pass ...
    with pytest.raises(ConfigError, match=message) as info:
        schema.validate(OmegaConf.merge(cfg[node], values))
    assert "\n" not in str(info.value)


def _own(path: Path) -> dict[str, Any]:
    own = OmegaConf.to_container(OmegaConf.load(path))
    assert isinstance(own, dict)
    return {k: v for k, v in own.items() if k != "defaults"}


@pytest.mark.parametrize(
    ("task", "nodes"),
    [
        ("search", ["bits", "select"]),
        ("pairs", ["bits", "train"]),
        ("reproduce", ["distill", "pairs", "search", "cross"]),
        ("audit", ["bits", "select"]),
    ],
)
def test_the_composed_config_keeps_the_yamls_values_types_and_order(
    task: str, nodes: list[str]
) -> None:
    cfg = load_config(task)
    own = _own(CONF_DIR / f"{task}.yaml")
    body = list(own)
    if task != "audit":  # (audit sets `env` of conf/search.yaml, which it composes first)
        assert list(cfg)[-len(body) :] == body  # the schemas moved no node
    composed = OmegaConf.to_container(cfg)
    assert isinstance(composed, dict)
    yaml = _own(CONF_DIR / "search.yaml") if task == "audit" else own
    for node in nodes:
        assert composed[node] == yaml[node], node
        assert list(composed[node]) == list(yaml[node]), node  # the yaml's key order
        for key, value in yaml[node].items():
            assert type(composed[node][key]) is type(value), (node, key)


@pytest.mark.parametrize(("group", "schema"), [("space", Space), ("env", Env)])
def test_every_space_and_env_option_is_typed_and_keeps_its_values(group: str, schema: Any) -> None:
    for path in sorted((CONF_DIR / group).glob("*.yaml")):
        cfg = load_config("search", [f"{group}={path.stem}"])
        assert OmegaConf.get_type(cfg[group]) is schema
        own = _own(path)
        composed = OmegaConf.to_container(cfg[group])
        assert composed == own and list(composed) == list(own), path  # type: ignore[arg-type]


def test_reproduce_refuses_a_bad_search_stage_value_before_any_stage_runs(tmp_path: Path) -> None:
    from qrl import reproduce

    out = tmp_path / "r"
    cfg = load_config("reproduce", [f"out={out}", "search.overrides.env.batch_size=0"])
    with pytest.raises(ConfigError, match=r"^search.overrides.env.batch_size must be >= 1, got 0"):
        reproduce.run(cfg)
    assert not out.exists()
