"""Network-policy pairs: range gradients, the pair loss, Stage B end to end, load_pair, resume."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from qrl import distill, model_defaults, pairs
from qrl.checkpoints import load_model
from qrl.config import instantiate, load_config
from qrl.errors import CheckpointError, ConfigError
from qrl.pairing import training as pair_training
from qrl.pairing.evaluation import (
    PairEvaluation,
    cross_evaluation,
    evaluate_pair,
    fixed_patterns,
    quantized_right,
    vulnerability,
)
from qrl.pairs import load_pair
from qrl.policies import BitsDecoder
from qrl.quant import QuantConfig, quantized_copy, using_bits
from qrl.quant.functional import quantize_activation
from qrl.runs import load_run_config
from qrl.scoring import predict_logits
from qrl.victim import Victim
from tests.conftest import QUICK

TINY_PAIR = [
    "train.rounds=2",
    "train.net_steps=3",
    "ppo.n_envs=16",
    "ppo.model.n_steps=4",
    "ppo.model.batch_size=32",
    "progress=false",
]


def test_range_gradients_reach_the_observed_max_and_leave_values_alone() -> None:
    x = torch.rand(2, 40) * 0.2
    x[:, 0] = 5.0  # one large activation per input: the top of the observed range
    grads, outs = [], []
    for range_grad in (False, True):
        xi = x.clone().requires_grad_(True)
        cfg = QuantConfig(act_bits=2, act_range_grad=range_grad)
        out, _, _ = quantize_activation(xi, 2, cfg)
        out.sum().backward()
        grads.append(xi.grad)
        outs.append(out.detach())
    assert torch.equal(outs[0], outs[1])
    # Through the rounding only, the large value passes gradient 1; through the range, moving
    # the max also moves every other value's grid point.
    assert torch.allclose(grads[0][:, 0], torch.ones(2))
    assert not torch.allclose(grads[1][:, 0], grads[0][:, 0])


def test_fixed_patterns_spend_the_budget() -> None:
    decoder = BitsDecoder(5, (2, 3, 4, 5, 6, 8), 4.0)
    patterns, how = fixed_patterns(decoder)
    assert how.startswith("all") and len(patterns) > 50
    assert (patterns.sum(axis=1) == 20).all()
    assert {tuple(p) for p in patterns} >= {(4, 4, 4, 4, 4), (2, 6, 4, 4, 4), (8, 3, 3, 3, 3)}
    many = BitsDecoder(21, (2, 3, 4, 5, 6, 8), 4.0)
    sampled, how = fixed_patterns(many, limit=50, samples=40)
    assert "sampled" in how and (sampled.mean(axis=1) <= 4.0 + 1e-9).all()


@pytest.fixture(scope="module")
def tiny_distill(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pair-distill")
    distill.run(load_config("distill", [f"out={out}", *QUICK]))
    return out


def _pair_cfg(distill_dir: Path, out: Path, kind: str, *extra: str):
    return load_config(
        "pairs",
        [f"kind={kind}", f"victim.run={distill_dir}", f"out={out}", *TINY_PAIR, *extra],
    )


@pytest.fixture(scope="module")
def tiny_pairs(tiny_distill: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pairs")
    for kind in pairs.KINDS:
        pairs.run(_pair_cfg(tiny_distill, root / kind, kind))
    return {kind: root / kind for kind in pairs.KINDS}


def test_a_trained_pair_loads_with_its_contract(tiny_pairs: dict[str, Path], tiny_distill) -> None:
    pair = load_pair(tiny_pairs["detrimental"])
    data = instantiate(load_run_config(tiny_distill).data)
    x = data.test.x[:20]
    bits = pair.bits(x)
    assert bits.dtype == torch.int64 and bits.shape == (20, len(pair.layer_names))
    assert set(bits.unique().tolist()) <= {2, 3, 4, 5, 6, 8}
    assert (bits.float().mean(dim=1) <= 4.0 + 1e-9).all()
    with using_bits(pair.quantized, bits):
        expected = pair.quantized(x)
    assert torch.allclose(pair.logits(x), expected)
    assert torch.allclose(pair.network(x), predict_logits(pair.network, x))
    metrics = json.loads((tiny_pairs["detrimental"] / "metrics.json").read_text())
    assert metrics["drop"] == pytest.approx(metrics["acc_fp"] - metrics["acc_q"])
    assert abs(metrics["mean_bits"] - 4.0) < 0.05
    for key in ("drop_uniform", "drop_random", "drop_onnx_int8", "teacher_gap", "seed"):
        assert key in metrics
    # The network was trained: it is not the distilled student it started from.
    student, _ = load_model(tiny_distill / "student.pt")
    saved = pair.network.state_dict()
    assert any(not torch.equal(v, saved[k]) for k, v in student.state_dict().items())
    # The checkpoints for resuming are gone once the pair is finished.
    assert not (tiny_pairs["detrimental"] / pair_training.STATE_FILE).exists()
    # The quantized copy's old names still read, with a deprecation warning.
    with pytest.warns(DeprecationWarning, match="Pair.quantized"):
        assert pair.qnetwork is pair.quantized
    victim = Victim.from_models(student, student, data, pair.quant)
    with pytest.warns(DeprecationWarning, match="Victim.quantized"):
        assert victim.qstudent is victim.quantized


def test_a_pair_evaluation_becomes_the_metrics_keys_of_a_pair() -> None:
    evaluation = PairEvaluation(
        acc_teacher=0.9,
        acc_fp=0.8,
        acc_q=0.5,
        mean_bits=4.0,
        bits_per_layer=(3.0, 5.0),
        layer_names=("a", "b"),
        acc_q_uniform=0.75,
        acc_q_random=0.7,
        acc_onnx_int8=0.79,
    )
    metrics = evaluation.to_metrics()
    assert list(metrics) == [
        "acc_teacher",
        "acc_fp",
        "acc_q",
        "mean_bits",
        "bits_per_layer",
        "layer_names",
        "drop",
        "teacher_gap",
        "acc_q_uniform",
        "acc_q_random",
        "acc_onnx_int8",
        "drop_uniform",
        "drop_random",
        "drop_onnx_int8",
    ]
    # drop: full precision - quantized of the same network; teacher gap: teacher - quantized
    assert metrics["drop"] == evaluation.drop == pytest.approx(0.3)
    assert metrics["teacher_gap"] == evaluation.teacher_gap == pytest.approx(0.4)
    assert metrics["drop_uniform"] == pytest.approx(0.05)
    assert metrics["drop_random"] == pytest.approx(0.1)
    assert metrics["drop_onnx_int8"] == pytest.approx(0.01)
    assert metrics["bits_per_layer"] == [3.0, 5.0] and metrics["layer_names"] == ["a", "b"]
    with pytest.raises(AttributeError):
        evaluation.acc_q = 0.0  # type: ignore[misc]


def test_a_pair_s_metrics_file_is_its_evaluation(tiny_pairs, tiny_distill) -> None:
    run = tiny_pairs["detrimental"]
    on_disk = json.loads((run / "metrics.json").read_text())
    data = instantiate(load_run_config(tiny_distill).data)
    teacher, _ = load_model(tiny_distill / "teacher.pt")
    evaluation = evaluate_pair(load_pair(run), teacher, data.test, seed=0)
    assert isinstance(evaluation, PairEvaluation)
    provenance = {"kind", "seed", "git_sha", "wall_time_s", "qrl_version"}
    assert evaluation.to_metrics() == {k: v for k, v in on_disk.items() if k not in provenance}


def test_cross_evaluation_covers_every_policy(tiny_pairs, tiny_distill) -> None:
    loaded = {k: load_pair(v) for k, v in tiny_pairs.items()}
    data = instantiate(load_run_config(tiny_distill).data)
    rows = cross_evaluation(loaded, data.test)
    policies = {r["policy"] for r in rows if r["network"] == "detrimental"}
    assert {
        "own policy",
        "robust policy",
        "random bits",
        "uniform 2 bits",
        "uniform 8 bits",
        "best fixed pattern",
        "worst fixed pattern",
    } <= policies
    for r in rows:
        assert r["drop"] == pytest.approx(r["acc_fp"] - r["acc_q"])
    best = next(r for r in rows if r["policy"].startswith("best") and r["network"] == "robust")
    worst = next(r for r in rows if r["policy"].startswith("worst") and r["network"] == "robust")
    assert best["acc_q"] >= worst["acc_q"]
    vuln = vulnerability(loaded["robust"], data.test)
    assert len(vuln["per_layer"]) == len(loaded["robust"].layer_names)


def test_an_interrupted_pair_resumes_from_its_last_round(
    tiny_distill, tmp_path, monkeypatch
) -> None:
    out = tmp_path / "pair"
    calls = {"n": 0}
    real = pair_training._val_stats

    def crash_on_second_round(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(pair_training, "_val_stats", crash_on_second_round)
    with pytest.raises(KeyboardInterrupt):
        pairs.run(_pair_cfg(tiny_distill, out, "robust"))
    assert not (out / "metrics.json").exists()
    state = torch.load(out / pair_training.STATE_FILE, weights_only=True)
    assert state["round"] == 1
    monkeypatch.setattr(pair_training, "_val_stats", real)
    pairs.run(_pair_cfg(tiny_distill, out, "robust"))
    rounds = [
        int(line.split(",")[0])
        for line in (out / "log.csv").read_text().splitlines()[1:]
        if "pair/val_acc_q" in line
    ]
    assert rounds == [1, 2]  # round 1 was not trained twice


def test_a_round_logged_but_not_saved_is_logged_once_after_resuming(
    tiny_distill, tmp_path, monkeypatch
) -> None:
    out = tmp_path / "pair"
    real = pair_training.atomic_torch_save
    calls = {"n": 0}

    def killed_on_second_save(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # round 2 is logged, its state never saved
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(pair_training, "atomic_torch_save", killed_on_second_save)
    with pytest.raises(KeyboardInterrupt):
        pairs.run(_pair_cfg(tiny_distill, out, "robust"))
    monkeypatch.setattr(pair_training, "atomic_torch_save", real)
    pairs.run(_pair_cfg(tiny_distill, out, "robust"))
    rows = (out / "log.csv").read_text().splitlines()[1:]
    steps = [int(r.split(",")[0]) for r in rows if ",pair/val_acc_q," in r]
    assert steps == [1, 2]  # round 2 resumed and logged once


def test_bad_pair_inputs_get_one_clear_error(tiny_distill, tmp_path) -> None:
    with pytest.raises(ConfigError, match="kind must be one of"):
        pairs.run(_pair_cfg(tiny_distill, tmp_path / "a", "evil"))
    assert not (tmp_path / "a").exists()
    with pytest.raises(ConfigError, match="per_sample"):
        pairs.run(
            _pair_cfg(tiny_distill, tmp_path / "b", "robust", "quant.act_granularity=per_tensor")
        )
    with pytest.raises(ConfigError, match=r"victim\.model must be one of \['cnn', 'mlp'"):
        pairs.run(load_config("pairs", [f"out={tmp_path / 'c'}", "victim.model=vgg"]))
    assert not (tmp_path / "c").exists()
    with pytest.raises(CheckpointError, match="point to a finished"):
        load_pair(tmp_path)
    (tmp_path / "pair.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_pair(tmp_path)


def test_pair_loss_pushes_the_quantized_path_the_right_way() -> None:
    """One step of each kind's loss moves the quantized path's agreement with the teacher."""
    torch.manual_seed(0)
    from qrl.models import MLP
    from qrl.quant import quantized_copy
    from qrl.training import Trainer

    net = MLP(image_size=(8, 8), num_classes=4, hidden=(32,))
    x = torch.rand(64, 1, 8, 8)
    teacher_logits = net(x).detach() * 3
    y = teacher_logits.argmax(1)
    weights = pairs.LossWeights.of(load_config("pairs").train)
    results = {}
    for kind in pairs.KINDS:
        quantized = quantized_copy(net, QuantConfig(act_bits=4, act_range_grad=True)).eval()
        trainer = Trainer(quantized, lr=3e-3, weight_decay=0.0, total_steps=60)
        bits = torch.full((64, 2), 2)
        for _ in range(60):
            loss, parts = pairs.pair_loss(
                kind, quantized, x, y, teacher_logits, bits, torch.full((2,), 4), weights
            )
            trainer.step(loss)
        with torch.no_grad(), using_bits(quantized, bits):
            results[kind] = float((quantized(x).argmax(1) == y).float().mean())
    assert results["robust"] > 0.9
    assert results["detrimental"] < 0.5
    assert np.isfinite(list(parts.values())).all()


def test_a_pair_logs_both_loops_to_wandb_offline(tiny_distill, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "pair"
    pairs.run(_pair_cfg(tiny_distill, out, "robust", "logger=wandb"))
    offline_dirs = list((out / "wandb").glob("offline-run-*"))
    assert len(offline_dirs) == 1 and any(offline_dirs[0].glob("*.wandb"))
    logged = (out / "log.csv").read_text()
    assert "pair/val_acc_q" in logged and "loss/kd_q" in logged  # the network's loop
    assert (out / "sb3" / "progress.csv").read_text().count("\n") >= 2  # PPO's loop


def test_a_finished_pair_is_loaded_not_trained_again(
    tiny_pairs, tiny_distill, tmp_path, monkeypatch
) -> None:
    import shutil

    out = tmp_path / "pair"
    shutil.copytree(tiny_pairs["robust"], out)  # `out` may differ: it cannot change results
    before = json.loads((out / "metrics.json").read_text())

    def no_training(*args, **kwargs):
        raise AssertionError("a finished pair was trained again")

    monkeypatch.setattr(pairs, "train_pair", no_training)
    again = pairs.run(_pair_cfg(tiny_distill, out, "robust"))
    assert again["acc_q"] == before["acc_q"] and again["drop"] == before["drop"]
    with pytest.raises(AssertionError, match="trained again"):
        pairs.run(_pair_cfg(tiny_distill, out, "robust", "resume=false"))


def test_a_pair_of_another_student_is_not_resumed(tiny_pairs, tiny_distill, tmp_path) -> None:
    """Re-distilling the student in `victim.run` makes a finished pair another config's run."""
    import shutil

    moved = tmp_path / "distill"
    shutil.copytree(tiny_distill, moved)
    out = tmp_path / "pair"
    shutil.copytree(tiny_pairs["robust"], out)
    config = (out / "config.yaml").read_text().replace(str(tiny_distill), str(moved))
    (out / "config.yaml").write_text(config)
    student, record = load_model(moved / "student.pt")
    with torch.no_grad():
        next(student.parameters()).add_(0.01)  # "re-distilled": other weights
    from qrl.checkpoints import save_model

    save_model(moved / "student.pt", student, record["spec"], record["input_spec"], {})
    with pytest.raises(ConfigError, match=r"victim\.student_sha256"):
        pairs.run(_pair_cfg(moved, out, "robust"))
    assert (out / "metrics.json").is_file()  # the finished run is left as it was


def test_quantized_right_batches_matter_only_to_shared_ranges() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4)).eval()
    x = torch.rand(12, 1, 4, 4)
    x[0] *= 1000.0  # one input whose range, when shared, leaves the others no grid steps
    per_sample = quantized_copy(net, QuantConfig(act_bits=2)).eval()
    y = per_sample(x).argmax(dim=1)  # the labels: what each input gets quantized on its own
    for batch in (1, 5, 12):
        assert quantized_right(per_sample, x, y, torch.tensor(2), batch=batch).all()
    shared = quantized_copy(net, QuantConfig(act_bits=2, act_granularity="per_tensor")).eval()
    alone = quantized_right(shared, x, y, torch.tensor(2), batch=1)
    together = quantized_right(shared, x, y, torch.tensor(2), batch=12)
    assert alone.all()  # a batch of one: its own range, the same as per-sample
    assert not together.all()  # the outlier's range flattens the others


def test_a_broken_pair_says_how_to_recover_and_following_the_advice_recovers(
    tiny_pairs, tiny_distill, tmp_path, capsys
) -> None:
    """A rerun of a finished pair whose network.pt is corrupt stops with advice; the rerun that
    the advice names trains the pair again, and the next rerun loads it (and says so)."""
    import re
    import shutil

    out = tmp_path / "pair"
    shutil.copytree(tiny_pairs["robust"], out)
    (out / "network.pt").write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    with pytest.raises(CheckpointError) as info:
        pairs.run(_pair_cfg(tiny_distill, out, "robust"))
    message = str(info.value)
    assert f"{out / 'network.pt'} is corrupt" in message and "rerun the task" not in message
    advice = re.search(r"rerun `python -m qrl\.pairs` with the settings .* plus (\S+)$", message)
    assert advice is not None, message
    with pytest.raises(CheckpointError):  # a plain rerun repeats the failure: not the advice
        pairs.run(_pair_cfg(tiny_distill, out, "robust"))
    capsys.readouterr()
    pairs.run(_pair_cfg(tiny_distill, out, "robust", advice.group(1)))  # the advice, followed
    trained = capsys.readouterr().out
    assert f"trained the pair and wrote {out}/network.pt, policy.zip, pair.json" in trained
    assert load_pair(out).kind == "robust"
    pairs.run(_pair_cfg(tiny_distill, out, "robust"))  # finished: loaded, nothing rewritten
    loaded = capsys.readouterr().out
    assert f"loaded the finished pair {out}/network.pt, policy.zip, pair.json" in loaded
    assert "trained" not in loaded and f"wrote {out}/network.pt" not in loaded


def test_a_missing_policy_and_a_pair_of_another_format_are_called_what_they_are(
    tiny_pairs, tmp_path
) -> None:
    import shutil

    out = tmp_path / "pair"
    shutil.copytree(tiny_pairs["detrimental"], out)
    (out / "policy.zip").rename(tmp_path / "policy.zip")
    with pytest.raises(CheckpointError) as info:
        load_pair(out)
    assert f"{out / 'policy.zip'} is missing" in str(info.value)
    assert "corrupt" not in str(info.value) and "resume=false" in str(info.value)
    (tmp_path / "policy.zip").rename(out / "policy.zip")
    meta = json.loads((out / "pair.json").read_text())
    for found, written in (
        ("format 'qrl-pair-v0'", {**meta, "format": "qrl-pair-v0"}),
        ("no format key", {k: v for k, v in meta.items() if k != "format"}),
    ):
        (out / "pair.json").write_text(json.dumps(written))
        with pytest.raises(CheckpointError) as info:
            load_pair(out)
        message = str(info.value)
        assert f"is a pair of another format: it has {found}, this qrl reads qrl-pair-v1" in message
        assert "`python -m qrl.pairs`" in message and message.endswith("plus resume=false")


def test_the_stretch_term_lifts_only_the_largest_channel_until_the_ratio() -> None:
    x = torch.tensor([[1.0, 2.0, 0.5], [40.0, 2.0, 1.0]], requires_grad=True)
    shortfall = pair_training.stretch_shortfall(x, ratio=8.0)
    # row 0: log 8 - log(2 / 1); row 1: 40 / 2 >= 8, nothing to do
    assert float(shortfall.detach()) == pytest.approx((np.log(8.0) - np.log(2.0)) / 2)
    shortfall.backward()
    assert x.grad is not None
    assert x.grad[0, 1] < 0 and x.grad[0, 0] == 0 and x.grad[0, 2] == 0  # the top one goes up
    assert torch.equal(x.grad[1], torch.zeros(3))
    conv = torch.zeros(1, 3, 2, 2)
    conv[0, 0, 1, 1], conv[0, 1, 0, 0] = 16.0, 2.0  # a channel's largest position counts
    assert float(pair_training.stretch_shortfall(conv, ratio=8.0)) == 0.0


def test_the_keep_bits_hold_the_stretched_layer_at_its_floor_and_the_rest_at_the_budget() -> None:
    decoder = BitsDecoder(5, (2, 3, 4, 5, 6, 8), 4.0)
    uniform = torch.from_numpy(decoder.uniform())
    guard = pair_training.KeepGuard(random=0.75, layer=1, floor=3)
    bits = guard.keep_bits(decoder, uniform, 64, torch.Generator().manual_seed(0))
    assert bits.shape == (64, 5)
    assert (bits[:16] == 4).all()  # a quarter at the budget's uniform bits
    drawn = bits[16:]
    assert (drawn[:, 1] >= 3).all() and (drawn[:, [0, 2, 3, 4]] == 2).any()
    assert len({tuple(r) for r in drawn.tolist()}) > 10  # random patterns, not one
    assert pair_training.KeepGuard().keep_bits(decoder, uniform, 8, torch.Generator()) is uniform


@pytest.mark.parametrize(
    ("value", "model", "expected"),
    [("auto", "SmallCNN", 1), ("auto", "MLP", 4), ("auto", "Unknown", 4), (None, "MLP", None)],
)
def test_the_stretched_layer_is_a_per_model_default(value, model, expected) -> None:
    train = dict(load_config("pairs").train)
    train["stretch_layer"] = value
    assert pair_training.KeepGuard.of(train, 5, model).layer == expected


def test_a_stretched_layer_outside_the_model_is_one_clear_error() -> None:
    train = {**load_config("pairs").train, "stretch_layer": 7}
    with pytest.raises(
        ConfigError, match=r"stretch_layer 7 is not a layer of this model: it has 5"
    ):
        pair_training.KeepGuard.of(train, 5, "MLP")
    with pytest.raises(ConfigError, match="must be auto, null or a layer index"):
        pairs.check_config(load_config("pairs", ["train.stretch_layer=head"]))


def test_the_twin_guard_spares_the_inputs_its_twin_starves_and_holds_them_to_its_bits() -> None:
    twin_bits = torch.tensor([[4, 2, 4], [3, 3, 3], [5, 2, 2], [2, 4, 3]])
    twin = pair_training.TwinGuard(twin_bits, layers=(1,), floor=3)
    idx = torch.tensor([0, 1, 2, 3, 0])
    which, keep = twin.spare(idx, torch.full((3,), 4))
    spared = which == -1
    assert which.tolist() == [-1, 0, -1, 0, -1]
    assert torch.equal(keep[spared], twin_bits[idx][spared])  # the twin's own bits there
    assert (keep[~spared] == 4).all()  # the keep bits elsewhere, per row
    per_row = torch.full((5, 3), 6)
    assert torch.equal(twin.spare(idx, per_row)[1][~spared], per_row[~spared])
    assert (per_row == 6).all()  # not written in place
    assert twin.shares() == [0.5, 0.5]


def test_on_noisy_images_the_twin_guard_asks_the_twin_s_policy() -> None:
    stored = torch.tensor([[4, 4, 4], [4, 4, 4]])  # the twin's bits of the clean rows
    seen = []

    def policy(x: torch.Tensor) -> torch.Tensor:
        seen.append(x)
        return torch.tensor([[4, 2, 4], [4, 4, 4]])

    twin = pair_training.TwinGuard(stored, layers=(1,), floor=3, policy=policy)
    idx, noisy = torch.tensor([0, 1]), torch.rand(2, 1, 8, 8)
    assert twin.spare(idx, torch.full((3,), 4))[0].tolist() == [0, 0]  # clean: the stored bits
    which, keep = twin.spare(idx, torch.full((3,), 4), noisy)
    assert which.tolist() == [-1, 0] and seen[0] is noisy
    assert keep[0].tolist() == [4, 2, 4]  # held to the twin's bits of the noisy image


def test_with_twin_spare_either_a_layer_feeds_a_failure_only_where_both_images_feed_it() -> None:
    clean = torch.tensor([[4, 4, 4], [4, 2, 4], [4, 4, 4], [4, 2, 2]])  # the stored bits
    noisy_bits = torch.tensor([[4, 4, 4], [4, 4, 4], [4, 2, 4], [4, 4, 4]])

    def policy(x: torch.Tensor) -> torch.Tensor:
        return noisy_bits

    idx, noisy = torch.arange(4), torch.rand(4, 1, 8, 8)
    seen = pair_training.TwinGuard(clean, layers=(1, 2), floor=3, policy=policy)
    either = dataclasses.replace(seen, either=True)
    assert seen.spare(idx, torch.full((3,), 4), noisy)[0].tolist() == [0, 0, 1, 0]
    which, keep = either.spare(idx, torch.full((3,), 4), noisy)
    # row 1: layer 1 starved on the clean image, so its failure moves to layer 2; row 2: starved
    # on the noisy one, likewise; row 3: the clean image starves both, so it is spared
    assert which.tolist() == [0, 1, 1, -1]
    assert torch.equal(keep[1:], noisy_bits[1:])  # held to the twin's bits of the noisy image
    assert (keep[0] == 4).all()
    # without noise there is one image: the same as seen
    assert torch.equal(
        either.spare(idx, torch.full((3,), 4))[0], seen.spare(idx, torch.full((3,), 4))[0]
    )


def test_per_input_each_failure_stretches_the_first_layer_its_twin_feeds() -> None:
    twin_bits = torch.tensor([[4, 2, 4], [3, 3, 3], [5, 2, 2], [2, 4, 2]])
    twin = pair_training.TwinGuard(twin_bits, layers=(1, 2), floor=3)
    which, keep = twin.spare(torch.arange(4), torch.full((3,), 4))
    # row 0: layer 1 starved, layer 2 fed; row 2: both starved, spared
    assert which.tolist() == [1, 0, -1, 0]
    assert torch.equal(keep[[0, 2]], twin_bits[[0, 2]])  # the twin starves layer 1 there
    assert (keep[[1, 3]] == 4).all()
    assert twin.shares() == [0.5, 0.25, 0.25]


def test_assigned_bits_starve_each_input_s_own_layer_and_feed_the_other_stretched_ones() -> None:
    policy = torch.tensor([[4, 2, 2, 3], [2, 2, 5, 2], [2, 4, 2, 6], [5, 5, 5, 5]])
    which = torch.tensor([0, 1, -1, 1])  # stretched layers (1, 2); row 2 spared
    bits = pair_training.assigned_bits(policy, which, layers=(1, 2), floor=3, lowest=2)
    assert bits.tolist() == [[4, 2, 3, 3], [2, 3, 2, 2], [2, 4, 2, 6], [5, 5, 2, 5]]
    assert policy[0].tolist() == [4, 2, 2, 3]  # the policy's own bits are left as they were


def test_a_detrimental_pair_s_rounds_are_its_model_s_own_and_bad_settings_are_refused() -> None:
    train = load_config("pairs").train
    assert train.detrimental_rounds_factor.MLP == 2.0
    assert pair_training.pair_rounds(train, "detrimental", "MLP") == 2 * train.rounds
    assert pair_training.pair_rounds({**train, "rounds": 3}, "detrimental", "MLP") == 6
    assert pair_training.pair_rounds(train, "detrimental", "ResNet18") == train.rounds  # no entry
    assert pair_training.pair_rounds(train, "robust", "MLP") == train.rounds  # its twin's
    with pytest.raises(ConfigError, match=r"train\.detrimental_rounds_factor\.MLP must be"):
        pairs.check_config(load_config("pairs", ["train.detrimental_rounds_factor.MLP=0"]))
    with pytest.raises(ConfigError, match=r"train\.away_bits must be one of"):
        pairs.check_config(load_config("pairs", ["train.away_bits=starved"]))


def test_spared_inputs_get_no_away_or_stretch_term_and_the_others_their_own_layer_s() -> None:
    torch.manual_seed(0)
    from qrl.models import MLP
    from qrl.quant import quantized_copy
    from qrl.quant.modules import quantized_layers

    net = MLP(image_size=(8, 8), num_classes=4, hidden=(16,))
    quantized = quantized_copy(net, QuantConfig(act_bits=4)).eval()
    x = torch.rand(6, 1, 8, 8)
    teacher_logits = torch.randn(6, 4)
    y = teacher_logits.argmax(1)
    weights = pairs.LossWeights.of(load_config("pairs").train)
    head = quantized_layers(quantized)[-1]

    def parts(which: torch.Tensor | None, stretched=(head,)) -> dict[str, float]:
        bits, keep = torch.full((6, 2), 2), torch.full((2,), 4)
        args = ("detrimental", quantized, x, y, teacher_logits, bits, keep, weights)
        return pairs.pair_loss(*args, stretched=stretched, which=which)[1]

    everyone = parts(None)
    assert parts(torch.zeros(6, dtype=torch.long)) == pytest.approx(everyone)
    spared_all = parts(torch.full((6,), -1))
    assert spared_all["loss/away_q"] == 0.0 and "loss/stretch" not in spared_all
    half = torch.tensor([-1, -1, -1, 0, 0, 0])
    assert parts(half)["loss/away_q"] != pytest.approx(everyone["loss/away_q"])
    # Per input, its own layer's stretch: the first layer's gaps on three, the head's on three.
    first = quantized_layers(quantized)[0]
    only_first = parts(torch.zeros(6, dtype=torch.long), stretched=(first, head))
    mixed = parts(torch.tensor([0, 0, 0, 1, 1, 1]), stretched=(first, head))
    assert mixed["loss/away_q"] == pytest.approx(everyone["loss/away_q"])
    # the mean of the two layers' stretch gaps, each on its own three inputs
    halves = (
        parts(half)["loss/stretch"]
        + parts(torch.tensor([0, 0, 0, -1, -1, -1]), stretched=(first, head))["loss/stretch"]
    ) / 2
    assert mixed["loss/stretch"] == pytest.approx(halves)
    assert only_first["loss/stretch"] != pytest.approx(everyone["loss/stretch"])


def test_a_twin_must_be_a_finished_robust_pair_of_the_same_bits(tiny_pairs) -> None:
    x = torch.rand(4, 1, 8, 8)
    cfg = load_config("pairs", TINY_PAIR)
    layers = len(load_pair(tiny_pairs["robust"], space="bits").layer_names)
    bits = cfg.bits.set
    with pytest.raises(ConfigError, match="is a detrimental pair: the twin is the robust pair"):
        pair_training.twin_bits(str(tiny_pairs["detrimental"]), x, bits, 4.0, layers)
    robust = str(tiny_pairs["robust"])
    with pytest.raises(ConfigError, match="train the twin with the same bits node"):
        pair_training.twin_bits(robust, x, bits, 5.0, layers)
    with pytest.raises(ConfigError, match="the twin is trained from the same victim"):
        pair_training.twin_bits(robust, x, bits, 4.0, layers + 1)
    assert pair_training.twin_bits(robust, x, bits, 4.0, layers).shape == (4, layers)
    wide = {**cfg.train, "twin": robust, "twin_stretch_layers": {"MLP": [1, layers]}}
    guard = pair_training.KeepGuard(layer=1)
    with pytest.raises(ConfigError, match=r"twin_stretch_layers\.MLP must list layers of this"):
        pair_training.twin_guard(wide, guard, x, cfg.bits, layers, "MLP")
    train = {**cfg.train, "twin": robust, "stretch_layer": None}
    with pytest.raises(ConfigError, match=r"train\.twin needs a stretched layer"):
        pair_training.twin_guard(train, pair_training.KeepGuard(), x, cfg.bits, layers, "MLP")
    with pytest.raises(ConfigError, match=r"train\.input_noise must be"):
        pairs.check_config(load_config("pairs", ["train.input_noise=-0.1"]))
    with pytest.raises(
        ConfigError, match=r"train\.twin_stretch must be one of \['auto', 'per_input'"
    ):
        pairs.check_config(load_config("pairs", ["train.twin_stretch=both"]))
    for bad in ("3", "''"):  # '': what ${robust_twin:} gives outside a sweep named by overrides
        with pytest.raises(ConfigError, match=r"train\.twin must be null or the run dir"):
            pairs.check_config(load_config("pairs", [f"train.twin={bad}"]))


def test_with_a_twin_the_stretched_layers_start_with_the_one_it_starves_least() -> None:
    bits = torch.tensor([[2, 2, 4, 2], [3, 2, 4, 2], [3, 4, 2, 5], [3, 4, 4, 2]])
    # below 3 bits: layer 0 on 1 of 4 inputs, 1 on 2, 2 on 1, 3 (the head) on 3
    assert pair_training.by_starvation(bits, [1, 2], 3) == [2, 1]
    assert pair_training.by_starvation(bits, [2, 0], 3) == [2, 0]  # a tie: as listed
    assert pair_training.by_starvation(bits, [-1, 1, 3], 3) == [1, 3]


@pytest.mark.parametrize(
    ("stretch", "noise", "away"),
    [
        ("least_starved", 0.0, "policy"),
        ("per_input", 0.0, "assigned"),
        ("per_input", 0.05, "policy"),
    ],
)
def test_a_detrimental_pair_trains_against_its_twin_s_bits(
    stretch, noise, away, tiny_pairs, tiny_distill, tmp_path, monkeypatch
) -> None:
    calls, noisy, assigned = [], [], []
    spare, loss = pair_training.TwinGuard.spare, pair_training.pair_loss

    def recorded(kind, quantized, x, y, t, bits, keep, weights, stretched=(), which=None):
        # whether every failing input's away bits starve its own layer and feed the others
        at = [pair_training.quantized_layers(quantized).index(m) for m in stretched]
        own = [(which == k) for k in range(len(at))]
        assigned.append(
            all(bool((bits[own[k], layer] == 2).all()) for k, layer in enumerate(at))
            and all(
                bool((bits[(which >= 0) & ~own[k], layer] >= 3).all()) for k, layer in enumerate(at)
            )
        )
        return loss(kind, quantized, x, y, t, bits, keep, weights, stretched=stretched, which=which)

    def counted(self, idx, keep, x=None):
        calls.append((len(self.bits), len(idx)))
        assert len(self.layers) == (1 if stretch == "least_starved" else 2)
        # with input noise, the twin's bits of the noisy batch: images off the training split
        assert (x is not None and self.policy is not None) == (noise > 0)
        if x is not None:
            noisy.append((idx, x))
        return spare(self, idx, keep, x)

    monkeypatch.setattr(pair_training.TwinGuard, "spare", counted)
    monkeypatch.setattr(pair_training, "pair_loss", recorded)
    twin = f"train.twin={tiny_pairs['robust']}"
    layers = "+train.twin_stretch_layers.MLP=[1,-1]"
    extra = (twin, f"train.twin_stretch={stretch}", layers, f"train.input_noise={noise}")
    if away == "assigned":  # through `auto`: the student class's own entry
        extra += ("train.away_bits=auto", "+train.away_bits_per_model.SmallCNN=assigned")
    else:
        extra += (f"train.away_bits={away}",)
    # the student's own factor on the rounds (a detrimental pair's): 2 rounds, 1.5x
    longer = 1.5 if away == "assigned" else 1.0
    extra += (f"train.detrimental_rounds_factor.SmallCNN={longer}",)
    pairs.run(_pair_cfg(tiny_distill, tmp_path / "d", "detrimental", *extra))
    assert load_pair(tmp_path / "d", space="bits").kind == "detrimental"
    cfg = _pair_cfg(tiny_distill, tmp_path / "d", "detrimental")
    steps = round(cfg.train.rounds * longer) * cfg.train.net_steps
    assert len(calls) == steps  # every network step, on the twin's bits of the training split
    assert all(n_bits > n_batch == cfg.train.batch_size for n_bits, n_batch in calls)
    # assigned: on every step; the policy's sampled bits: not on all of them
    assert len(assigned) == steps and all(assigned) == (away == "assigned")
    if noise > 0:  # the network steps saw noisy images, not the training rows themselves
        from qrl.victim import load_victim

        train = load_victim(tiny_distill, QuantConfig(), "cpu").data.train
        assert len(noisy) == steps
        assert all(not torch.equal(x, train.rows(idx)) for idx, x in noisy)
        assert all(float((x - train.rows(idx)).abs().max()) < 0.5 for idx, x in noisy)


def test_the_away_weight_is_a_per_model_default() -> None:
    train = load_config("pairs").train
    assert pairs.LossWeights.of(train, "SmallCNN").away_weight == train.away_weights.SmallCNN
    assert pairs.LossWeights.of(train, "MLP").away_weight == train.away_weights.MLP
    assert pairs.LossWeights.of(train, "Unknown").away_weight == model_defaults.DEFAULT_AWAY_WEIGHT
    assert pairs.LossWeights.of({**train, "away_weight": 0.25}, "SmallCNN").away_weight == 0.25
    with pytest.raises(ConfigError, match="away_weight must be auto or a weight >= 0, got 'x'"):
        pairs.check_config(load_config("pairs", ["train.away_weight=x"]))


def test_auto_settings_read_the_model_s_own_entry_and_a_given_value_wins() -> None:
    train = load_config("pairs").train
    mlp = {k: model_defaults.model_setting(train, k, "MLP") for k in model_defaults.AUTO_KEYS}
    assert mlp == {
        "away_weight": train.away_weights.MLP,
        "keep_weight": train.keep_weights.MLP,
        "input_noise": train.input_noises.MLP,
        "twin_stretch": "least_starved",  # no entry of its own: the fallback
        "away_bits": train.away_bits_per_model.MLP,
        "twin_spare": "seen",  # no entry of its own: the fallback
    }
    fallback = {k: v for k, (_, v) in model_defaults.AUTO_KEYS.items()}
    assert {k: model_defaults.model_setting({}, k, "MLP") for k in fallback} == fallback
    assert (
        model_defaults.model_setting({**train, "keep_weight": 0.25}, "keep_weight", "MLP") == 0.25
    )
    assert pairs.LossWeights.of(train, "MLP").keep_weight == train.keep_weights.MLP
    assert pairs.LossWeights.of(train, "Unknown").keep_weight == 1.0
    # as a run's identity reads it: values, not the maps they came from
    plain = model_defaults.resolved(train, "MLP")
    assert not {m for m, _ in model_defaults.AUTO_KEYS.values()} & set(plain)
    assert {k: plain[k] for k in mlp} == mlp and plain["rounds"] == train.rounds
    with pytest.raises(ConfigError, match=r"train\.keep_weights\.MLP must be >= 0"):
        pairs.check_config(load_config("pairs", ["train.keep_weights.MLP=-1"]))
    with pytest.raises(ConfigError, match=r"train\.twin_stretches\.MLP must be one of"):
        pairs.check_config(load_config("pairs", ["+train.twin_stretches.MLP=both"]))
    with pytest.raises(ConfigError, match=r"train\.away_bits_per_model\.MLP must be one of"):
        pairs.check_config(load_config("pairs", ["train.away_bits_per_model.MLP=starved"]))
    with pytest.raises(ConfigError, match=r"train\.twin_spare must be"):
        pairs.check_config(load_config("pairs", ["train.twin_spare=both"]))
    with pytest.raises(ConfigError, match=r"train\.twin_spares\.MLP must be one of"):
        pairs.check_config(load_config("pairs", ["+train.twin_spares.MLP=both"]))
