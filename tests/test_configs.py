"""Every config group option composes, and what it names can be built."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from qrl.agents import AGENT_KINDS
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
        assert type(model).__name__ == name.upper()
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
