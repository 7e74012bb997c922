"""Every config group option composes, and what it names can be built."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from qrl.agents import AGENT_KINDS
from qrl.bench import sb3_algorithm
from qrl.checkpoints import InputSpec, build_model
from qrl.config import CONF_DIR, instantiate, load_config
from qrl.errors import DataError


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("name", options("data"))
def test_every_data_option_composes_and_instantiates(name: str, tmp_path: Path) -> None:
    cfg = load_config("distill", [f"data={name}", "out=x"])
    assert cfg.data.name == name
    if name in ("digits", "synthetic"):
        assert len(instantiate(cfg.data).test) > 0
    else:  # the others read local files: without data.root the error says so
        with pytest.raises(DataError, match=r"data\.root"):
            instantiate(cfg.data)


@pytest.mark.parametrize("name", options("model"))
@pytest.mark.parametrize("role", ["teacher", "student"])
def test_every_model_option_builds(name: str, role: str) -> None:
    cfg = load_config("distill", [f"model={name}", "out=x"])
    spec = {k: v for k, v in cfg.model[role].items()}
    model = build_model(spec, InputSpec(3, 10, (16, 16), (0.5,) * 3, (0.25,) * 3))
    assert model(torch.rand(2, 3, 16, 16)).shape == (2, 10)


@pytest.mark.parametrize("name", options("logger"))
def test_every_logger_option_composes(name: str) -> None:
    cfg = load_config("distill", [f"logger={name}", "out=x"])
    assert "wandb" in cfg.logger


def test_hydra_run_dir_default_is_under_runs() -> None:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("distill", return_hydra_config=True)
    assert str(cfg.hydra.run.dir).startswith("runs/distill/")


@pytest.mark.parametrize("name", options("agent"))
def test_every_agent_option_composes_and_builds(name: str) -> None:
    cfg = load_config("search", [f"agent={name}", "out=x"])
    assert cfg.agent.name == name and cfg.agent.kind in AGENT_KINDS
    if cfg.agent.kind == "sb3":
        import gymnasium as gym

        factory = instantiate(cfg.agent.model)  # a partial: the search supplies env and seed
        model = factory(env=gym.make("Pendulum-v1"), seed=0)  # a Box action, as qrl's envs
        assert type(model).__name__.lower() == sb3_algorithm(name)  # ppo_narrow: "ppo"
        for key in ("learning_rate", "gamma", "batch_size", "n_steps", "tau", "buffer_size"):
            if key in cfg.agent.model:
                assert getattr(model, key) == cfg.agent.model[key], key


@pytest.mark.parametrize("group", ["space", "env", "quant"])
def test_every_search_group_option_composes(group: str) -> None:
    for name in options(group):
        cfg = load_config("search", [f"{group}={name}", "out=x"])
        own = OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / f"{name}.yaml"))
        assert isinstance(own, dict)
        composed = OmegaConf.to_container(cfg[group])
        assert {k: composed.get(k) for k in own if k != "defaults"} == {  # type: ignore[union-attr]
            k: v for k, v in own.items() if k != "defaults"
        }, name


@pytest.mark.parametrize("task", ["distill", "quant_eval", "search", "audit"])
def test_every_task_config_composes(task: str) -> None:
    cfg = load_config(task, ["out=x", "run=y"] if task == "quant_eval" else ["out=x"])
    assert cfg.task == task


@pytest.mark.parametrize("name", options("experiment"))
def test_every_experiment_preset_composes(name: str) -> None:
    cfg = load_config("search", [f"+experiment={name}", "out=x"])
    preset = OmegaConf.load(CONF_DIR / "experiment" / f"{name}.yaml")
    for entry in preset.get("defaults", []):  # `override /quant: int4_dynamic`, ...
        for key, option in entry.items():
            group = key.split()[-1].lstrip("/")
            own = OmegaConf.load(CONF_DIR / group / f"{option}.yaml")
            own.pop("defaults", None)  # a group option's schema (`/schema/space@_here_`)
            assert OmegaConf.to_container(cfg[group]) == OmegaConf.to_container(own), group
    values = OmegaConf.masked_copy(preset, [k for k in preset if k != "defaults"])
    assert OmegaConf.merge(cfg, values) == cfg  # every value the preset sets is in the config


def test_the_digits_int4_experiment_searches_4_bit_activations() -> None:
    cfg = load_config("search", ["+experiment=digits_int4", "out=x"])
    assert cfg.quant.act_bits == 4 and cfg.quant.act_granularity == "per_sample"
    assert cfg.space.mode == "input" and cfg.budget.evaluations == 1000


@pytest.mark.parametrize("name", options("sweep"))
def test_every_sweep_preset_composes(name: str) -> None:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("search", overrides=[f"+sweep={name}", "out=x"], return_hydra_config=True)
    swept = list(cfg.hydra.sweeper.params)
    assert swept and all(k == "seed" or k.split(".")[0] in cfg for k in swept), swept
    assert any(k == "agent" or k.startswith("agent.") for k in swept)  # agents or their settings


def test_configs_compose_inside_a_running_hydra_app() -> None:
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        running = GlobalHydra.instance().hydra
        assert load_config("distill", ["out=x"]).task == "distill"
        assert GlobalHydra.instance().hydra is running


@pytest.mark.parametrize(
    ("task", "override", "closest"),
    [
        ("reproduce", "+pairs.train.roundz=2", "pairs.train.rounds"),
        ("reproduce", "pairs.train.roundz=2", "pairs.train.rounds"),
        ("reproduce", "search.overrides.eval.sampels=64", "search.overrides.eval.samples"),
        ("reproduce", "pair.train.rounds=2", "pairs.train.rounds"),
        ("pairs", "+train.roundz=2", "train.rounds"),
        ("pairs", "train.roundz=2", "train.rounds"),
        ("pairs", "+ppo.model.target_k=0.1", "ppo.model.target_kl"),  # not a PPO parameter
        ("distill", "+model.student.widht=8", "model.student.width"),
        ("search", "~seedz", "seed"),
    ],
)
def test_an_unknown_key_is_one_line_naming_the_closest_keys(
    task: str, override: str, closest: str
) -> None:
    from qrl.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load_config(task, [override])
    message = str(info.value)
    assert "\n" not in message and f"unknown key {override.lstrip('+~').split('=')[0]!r}" in message
    assert f"closest valid keys: {closest}" in message


def test_keys_that_need_a_plus_still_compose() -> None:
    """`+` adds below a null node, a `_target_`'s own parameter, a preset; `+hydra.*` is Hydra's."""
    from qrl.config import checked_argv

    audit = load_config("audit", ["+model.spec._target_=qrl.models.MLP", "+model.spec.hidden=[32]"])
    assert audit.model.spec == {"_target_": "qrl.models.MLP", "hidden": [32]}
    assert load_config("pairs", ["+ppo.model.target_kl=0.02"]).ppo.model.target_kl == 0.02
    assert load_config("pairs", ["+seed=3"]).seed == 3  # `+` for a key that is there: sets it
    argv = [
        "-m",
        "+sweep=tune_ppo",
        "hydra.sweeper.n_trials=3",
        "hydra/launcher=ray",
        "+hydra.launcher.ray.init.num_cpus=2",
        "+experiment=digits_int4",
        "hydra.run.dir=x",
    ]
    assert checked_argv("search", argv) == argv


def test_a_per_model_map_takes_another_model_with_plus_its_value_typed() -> None:
    from qrl.errors import ConfigError

    cfg = load_config("pairs", ["+train.twin_stretch_layers.MLP=[1,-1]"])
    assert cfg.train.twin_stretch_layers == {"SmallCNN": [1, 2], "MLP": [1, -1]}
    assert load_config("pairs", ["+train.away_weights.Wide=0.2"]).train.away_weights.Wide == 0.2
    with pytest.raises(ConfigError, match=r"add it with \+train\.away_weights\.Wide=0\.2"):
        load_config("pairs", ["train.away_weights.Wide=0.2"])
    with pytest.raises(ConfigError, match=r"unknown key 'train\.away_weights\.Wide\.deep'"):
        load_config("pairs", ["+train.away_weights.Wide.deep=0.2"])
    with pytest.raises(ConfigError, match=r"^bad value for train\.away_weights\.Wide: .*Float"):
        load_config("pairs", ["+train.away_weights.Wide=heavy"])


def test_a_misspelt_hydra_key_or_a_preset_without_plus_is_one_line() -> None:
    from qrl.config import checked_argv
    from qrl.errors import ConfigError

    with pytest.raises(ConfigError, match=r"closest valid keys: hydra\.run\.dir"):
        checked_argv("search", ["hydra.run.dirr=x"])
    with pytest.raises(ConfigError, match=r"use \+experiment=digits_int4") as info:
        checked_argv("search", ["experiment=digits_int4"])
    assert "\n" not in str(info.value)


def test_reproduce_takes_stage_settings_with_or_without_plus() -> None:
    from qrl.config import checked_argv

    new = ["pairs.train.rounds=30", "distill.student.epochs=20", "search.overrides.eval.samples=64"]
    cfg = load_config("reproduce", new)
    assert cfg == load_config("reproduce", [f"+{o}" for o in new])  # the old spelling
    assert cfg.pairs.train.rounds == 30 and cfg.distill.student.epochs == 20
    assert cfg.search.overrides.eval.samples == 64
    argv = ["-m", "pairs.train.rounds=2,3", "seeds=[1]", "+pairs.train.rounds=4"]
    assert checked_argv("reproduce", argv) == [  # as the old spelling: the same job dirs
        "-m",
        "+pairs.train.rounds=2,3",
        "seeds=[1]",
        "++pairs.train.rounds=4",  # given again: the last one counts, as for any key
    ]
