"""Environment contract: both checkers, seeded determinism, info keys, actions, the VecEnv."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import qrl  # noqa: F401  (registers the environments)
from qrl import victim as victim_module
from qrl.envs.quant_bits import QuantBitsEnv, QuantBitsVecEnv
from qrl.envs.quant_failure import QuantFailureEnv
from qrl.errors import ConfigError
from qrl.quant import preset
from qrl.victim import Victim, load_victim

ENV_CASES = [
    ("qrl/QuantFailure-v0", {"mode": "input"}),
    ("qrl/QuantFailure-v0", {"mode": "bits"}),
    ("qrl/QuantFailure-v0", {"mode": "joint", "batch_size": 64}),
    ("qrl/QuantBits-v0", {"reward": "detrimental"}),
    ("qrl/QuantBits-v0", {"reward": "robust"}),
]


@pytest.fixture(scope="module")
def victim(digits_run: Path) -> Victim:
    return load_victim(digits_run, preset("int4_dynamic"))


@pytest.mark.parametrize("env_id,kwargs", ENV_CASES)
def test_both_checkers_pass_without_warnings(victim: Victim, env_id: str, kwargs: dict) -> None:
    env = gym.make(env_id, victim=victim, **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gym_check_env(env.unwrapped)
        sb3_check_env(env.unwrapped)
    assert [str(w.message) for w in caught] == []


def _rollout(env: gym.Env, seed: int, steps: int = 20) -> list:
    rng = np.random.default_rng(123)
    obs, info = env.reset(seed=seed)
    trace = [(obs, info)]
    for _ in range(steps):
        obs, reward, terminated, truncated, info = env.step(
            rng.uniform(-1, 1, env.action_space.shape)
        )
        trace.append((obs, reward, terminated, truncated, info))
        if terminated or truncated:
            obs, info = env.reset()
            trace.append((obs, info))
    return trace


@pytest.mark.parametrize("env_id,kwargs", ENV_CASES[::2] + ENV_CASES[3:4])
def test_seeded_rollouts_are_identical_across_instances(
    victim: Victim, env_id: str, kwargs: dict
) -> None:
    a = _rollout(gym.make(env_id, victim=victim, **kwargs), seed=7)
    b = _rollout(gym.make(env_id, victim=victim, **kwargs), seed=7)
    for step_a, step_b in zip(a, b, strict=True):
        for x, y in zip(step_a, step_b, strict=True):
            if isinstance(x, np.ndarray):
                assert np.array_equal(x, y)
            else:
                assert x == y
    c = _rollout(gym.make(env_id, victim=victim, **kwargs), seed=8)
    assert any(not np.array_equal(sa[0], sc[0]) for sa, sc in zip(a, c, strict=False))


@pytest.mark.parametrize("env_id,kwargs", ENV_CASES[:1] + ENV_CASES[3:4])
def test_info_keys_are_the_same_at_reset_and_every_step(
    victim: Victim, env_id: str, kwargs: dict
) -> None:
    env = gym.make(env_id, victim=victim, **kwargs)
    _, info = env.reset(seed=0)
    keys = set(info)
    assert {"acc_teacher", "acc_fp", "acc_q", "gap", "drop", "mean_bits"} <= keys
    assert info["drop"] == pytest.approx(info["acc_fp"] - info["acc_q"])
    for _ in range(5):
        *_, info = env.step(env.action_space.sample())
        assert set(info) == keys and all(isinstance(v, float) for v in info.values())
        assert info["drop"] == pytest.approx(info["acc_fp"] - info["acc_q"])


@pytest.mark.parametrize("env_id,kwargs", [ENV_CASES[2], ENV_CASES[3]])
def test_nan_actions_are_refused_and_out_of_range_actions_clipped(
    victim: Victim, env_id: str, kwargs: dict
) -> None:
    env = gym.make(env_id, victim=victim, **kwargs)
    env.reset(seed=0)
    bad = np.zeros(env.action_space.shape)
    bad[0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        env.step(bad)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(env.action_space.shape[0] + 1))
    big = np.full(env.action_space.shape, 5.0)
    env.reset(seed=3)
    clipped = env.step(big)
    env.reset(seed=3)
    boundary = env.step(np.ones(env.action_space.shape))
    assert np.array_equal(clipped[0], boundary[0]) and clipped[1] == boundary[1]


def test_destroying_the_images_never_pays(victim: Victim) -> None:
    env = QuantFailureEnv(victim, mode="input", corruptions=["brightness"], class_mix=False)
    env.reset(seed=0)
    _, reward, *_, info = env.step(np.array([1.0]))  # +0.5 brightness: mostly white images
    assert info["acc_teacher"] < 0.9 and info["valid"] == 0.0
    assert reward == pytest.approx(info["gap"] - 2.0 * (0.9 - info["acc_teacher"]))
    assert reward < 0


def test_bits_mode_decodes_actions_under_the_budget(victim: Victim) -> None:
    env = QuantFailureEnv(victim, mode="bits", batch_size=32)
    env.reset(seed=0)
    action = np.array([1, 1, -1, -1, 0.0])
    *_, info = env.step(action)
    assert info["mean_bits"] == 4.0
    assert env.task.describe(action) == "bits 6/6/2/2/4"


def test_vectorized_scores_match_single_inputs(victim: Victim) -> None:
    venv = QuantBitsVecEnv(num_envs=32, seed=0, victim=victim)
    venv.reset()
    task = venv.task
    actions = np.random.default_rng(0).uniform(-1, 1, (32, task.num_layers))
    rewards, q_right, bits = task.score(venv._x, venv._y, actions, venv._teacher_right)
    for i in range(32):
        r_i, q_i, b_i = task.score(
            venv._x[i : i + 1],
            venv._y[i : i + 1],
            actions[i : i + 1],
            venv._teacher_right[i : i + 1],
        )
        assert r_i[0] == rewards[i] and bool(q_i[0]) == bool(q_right[i])
        assert np.array_equal(b_i[0], bits[i])


def test_vec_env_follows_the_sb3_contract(victim: Victim) -> None:
    venv = QuantBitsVecEnv(num_envs=8, max_episode_steps=3, victim=victim, reward="robust")
    venv.seed(5)
    first = venv.reset()
    assert first.shape == (8, *venv.observation_space.shape) and first.dtype == np.float32
    for t in range(3):
        _, rewards, dones, infos = venv.step(np.zeros((8, venv.action_space.shape[0])))
        assert rewards.shape == (8,) and set(np.unique(rewards)) <= {0.0, 1.0}
        assert dones.all() == (t == 2)
    assert all(info["TimeLimit.truncated"] for info in infos)
    assert all(info["terminal_observation"].shape == venv.observation_space.shape for info in infos)
    venv.seed(5)
    assert np.array_equal(venv.reset(), first)


def test_ppo_trains_on_the_vectorized_env(victim: Victim) -> None:
    from stable_baselines3 import PPO

    venv = QuantBitsVecEnv(num_envs=16, seed=0, victim=victim, reward="robust")
    model = PPO("MlpPolicy", venv, n_steps=8, batch_size=64, n_epochs=1, seed=0, device="cpu")
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(total_timesteps=256)
    assert model.num_timesteps == 256  # two rollouts of 16 inputs x 8 steps
    assert any(
        not torch.equal(a, b) for a, b in zip(before, model.policy.parameters(), strict=True)
    )
    # What PPO learned from is the env's per-input signal: 0/1 rewards (robust: 1 where the
    # quantized student is right, as it mostly is), one observation per input (the context).
    buffer = model.rollout_buffer
    assert buffer.rewards.shape == (8, 16)
    assert set(np.unique(buffer.rewards)) <= {0.0, 1.0} and buffer.rewards.mean() > 0.5
    obs = buffer.observations.reshape(8, 16, -1)
    assert not np.allclose(obs[:, 0], obs[:, 1])
    assert all(venv.observation_space.contains(o) for o in obs[0])


def test_custom_models_and_tensors_as_data() -> None:
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    x, y = torch.rand(90, 1, 8, 8), torch.arange(90) % 3
    env = gym.make("qrl/QuantBits-v0", student=student, data=(x, y), quant="int8_dynamic")
    assert isinstance(env.unwrapped, QuantBitsEnv)
    gym_check_env(env.unwrapped)
    failure = QuantFailureEnv(student=student, data=(x, y), batch_size=16, mode="joint")
    _, info = failure.reset(seed=0)
    assert info["acc_teacher"] == info["acc_fp"]  # the teacher defaults to the student


def test_make_without_arguments_uses_the_cached_default_victim(
    digits_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QRL_CACHE", str(tmp_path))
    shutil.copytree(digits_run, tmp_path / "victims" / victim_module.DEFAULT_VICTIM)
    monkeypatch.setattr("qrl.distill.run", _must_not_train)
    for env_id in ("qrl/QuantFailure-v0", "qrl/QuantBits-v0"):
        env = gym.make(env_id)
        obs, info = env.reset(seed=0)
        assert env.observation_space.contains(obs) and info["acc_teacher"] > 0.8


def _must_not_train(*args, **kwargs):  # pragma: no cover - called only when the cache is broken
    raise AssertionError("the cached victim should have been loaded, not trained")


def _quick_recipe(model: str):
    """The cached victim's recipe of `model`, one epoch a phase, on a small synthetic data set."""
    recipe = victim_module.DistillRecipe.default(model)
    data = {"_target_": "qrl.data.load_data", "name": "synthetic", "seed": 0}
    return recipe.with_epochs(1, 1), data


def test_first_use_trains_and_caches_the_victim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QRL_CACHE", str(tmp_path))
    monkeypatch.setattr(victim_module, "DEFAULT_VICTIM", "quick-test-victim")
    monkeypatch.setattr(victim_module, "victim_recipe", _quick_recipe)
    first = victim_module.default_victim(preset("int8_dynamic"), progress=False)
    assert (tmp_path / "victims" / "quick-test-victim" / "metrics.json").is_file()
    monkeypatch.setattr(victim_module, "distil", _must_not_train)
    second = victim_module.default_victim(preset("int8_dynamic"))
    w1, w2 = first.student.state_dict(), second.student.state_dict()
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_each_victim_model_has_its_own_cache_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QRL_CACHE", str(tmp_path))
    monkeypatch.setattr(victim_module, "victim_recipe", _quick_recipe)
    mlp = victim_module.default_victim(preset("int8_dynamic"), progress=False, model="mlp")
    assert type(mlp.student).__name__ == "MLP"
    assert victim_module.victim_dir("mlp") == tmp_path / "victims" / "digits-mlp-s0"
    assert (victim_module.victim_dir("mlp") / "metrics.json").is_file()
    assert not victim_module.victim_dir("cnn").exists()  # the default victim is left alone
    with pytest.raises(ConfigError, match=r"victim\.model must be one of"):
        victim_module.victim_dir("vgg")


def test_student_reference_measures_quantization_alone(victim: Victim) -> None:
    env = QuantFailureEnv(victim, mode="input", batch_size=128, reference="student")
    env.reset(seed=0)
    *_, info = env.step(np.full(env.action_space.shape, 0.3))
    assert info["gap"] == pytest.approx(info["acc_fp"] - info["acc_q"])
    with pytest.raises(ConfigError, match="reference must be teacher or student, got 'oracle'"):
        QuantFailureEnv(victim, reference="oracle")


def test_per_input_bits_need_per_sample_quantization(victim: Victim) -> None:
    from dataclasses import replace

    per_tensor = replace(victim, quant=preset("int4_dynamic", act_granularity="per_tensor"))
    with pytest.raises(ConfigError, match="only with act_granularity=per_sample, got per_tensor"):
        QuantBitsEnv(per_tensor)


def test_each_victim_is_sized_to_distil_in_minutes_and_resized_by_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QRL_CACHE", str(tmp_path))
    for name in (victim_module.WIDTHS_ENV, victim_module.EPOCHS_ENV):
        monkeypatch.delenv(name, raising=False)
    recipe, _ = victim_module.victim_recipe("resnet18")  # half the widths, 10 + 12 epochs
    assert (recipe.teacher_spec["width"], recipe.student_spec["width"]) == (32, 16)
    assert (recipe.teacher.epochs, recipe.student.epochs) == (10, 12)
    assert victim_module.victim_dir("resnet18").name == "digits-resnet18-w32x16-e10x12-s0"
    cnn, _ = victim_module.victim_recipe("cnn")  # as `python -m qrl.distill` trains it
    assert cnn == victim_module.DistillRecipe.default("cnn")
    assert victim_module.victim_dir("cnn").name == "digits-cnn-s0"
    monkeypatch.setenv(victim_module.EPOCHS_ENV, "2,3")
    small, _ = victim_module.victim_recipe("mlp")
    assert (small.teacher.epochs, small.student.epochs) == (2, 3)
    assert victim_module.victim_dir("mlp").name == "digits-mlp-e2x3-s0"  # cached apart
    monkeypatch.setenv(victim_module.EPOCHS_ENV, "30,40")  # the defaults: the same entry
    assert victim_module.victim_dir("cnn").name == "digits-cnn-s0"
    monkeypatch.setenv(victim_module.WIDTHS_ENV, "64,32")  # full size: the conf's widths
    assert victim_module.victim_recipe("resnet18")[0].student_spec["width"] == 32
    assert victim_module.victim_dir("resnet18").name == "digits-resnet18-s0"  # as before
    with pytest.raises(ConfigError, match="has no width"):
        victim_module.victim_dir("mlp")
    monkeypatch.setenv(victim_module.WIDTHS_ENV, "16")
    with pytest.raises(ConfigError, match=r"QRL_VICTIM_WIDTHS must be two integers"):
        victim_module.victim_dir("cnn")


def test_epoch_estimates_say_what_the_first_epoch_of_each_phase_took() -> None:
    # teacher: 9.8 s an epoch; student: a first epoch of 8 s (warm-up), then 1 s each
    times = iter([0.0, 9.8, 19.6, 29.4, 37.4, 38.4, 39.4])
    lines: list[str] = []
    estimates = victim_module.EpochEstimates(
        {"teacher": 12, "student": 10}, clock=lambda: next(times), write=lines.append
    )
    for step in (1, 2, 3):
        estimates({"teacher/loss": 1.0}, step)
    for step in (1, 2, 3):
        estimates({"student/loss": 1.0, "student/val_acc": 0.5}, step)
    assert lines == [
        "qrl: teacher epoch 1/12 took 9.8 s, about 1.8 min left for the teacher",
        "qrl: student epoch 1/10 took 8.0 s, about 72 s left for the student",
        "qrl: student epoch 2/10 took 1.0 s, about 8 s left for the student",  # revised
    ]


def test_the_cached_victim_prints_estimates_without_progress_bars(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QRL_CACHE", str(tmp_path))
    monkeypatch.setattr(victim_module, "victim_recipe", _quick_recipe)
    victim_module.default_victim(preset("int8_dynamic"), progress=False, model="mlp")
    out = capsys.readouterr().out
    assert "qrl: teacher epoch 1/1 took" in out and "qrl: student epoch 1/1 took" in out


def test_the_cached_victim_distils_on_one_thread_unless_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QRL_CACHE", str(tmp_path))
    monkeypatch.delenv(victim_module.THREADS_ENV, raising=False)
    monkeypatch.setattr(victim_module, "victim_recipe", _quick_recipe)
    seen: list[int] = []
    real = victim_module.distil

    def counting(*args: object, **kwargs: object) -> object:
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(victim_module, "distil", counting)
    before = torch.get_num_threads()
    victim_module.default_victim(preset("int8_dynamic"), progress=False, model="mlp")
    assert seen == [1] and torch.get_num_threads() == before  # restored afterwards
    monkeypatch.setenv(victim_module.THREADS_ENV, "2")
    assert victim_module.victim_threads() == 2
    monkeypatch.setenv(victim_module.THREADS_ENV, "two")
    with pytest.raises(ConfigError, match="QRL_VICTIM_THREADS must be an integer"):
        victim_module.victim_threads()
