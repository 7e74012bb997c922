"""Input-distribution pairs (`python -m qrl.pairs space=input`): Stage B and C end to end, the
`InputPair` that `load_pair` gives back, bad input, the head gain and batch coupling."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from qrl import input_pairs, pairs
from qrl.checkpoints import InputSpec, build_model, load_model, save_model
from qrl.config import instantiate, load_config
from qrl.data import Split
from qrl.errors import ConfigError
from qrl.models import ChannelGain, head_gain, with_head_gain
from qrl.pairing import InputPair, Pair, load_pair
from qrl.pairing import inputs as input_training
from qrl.pairing.input_evaluation import batch_coupling, evaluate_input_pair
from qrl.policies.input import InputDistribution
from qrl.quant import as_quant_config
from qrl.runs import load_run_config
from qrl.scoring import correct, predict_logits, rate
from tests.conftest import run_at_once

# One small pair: a few rounds and steps, a handful of random distributions, no audit.
TINY_INPUT_PAIR = [
    "train.rounds=2",
    "train.net_steps=2",
    "train.settle_steps=5",
    "train.evaluations_per_round=4",
    "train.eval_batch=16",
    "train.batch_size=16",
    "agent.model.n_steps=4",
    "agent.model.batch_size=4",
    "agent.model.n_epochs=2",
    "eval.random=3",
    "eval.audit.evaluations=0",
    "progress=false",
]
PROVENANCE = {"kind", "seed", "git_sha", "wall_time_s", "qrl_version"}


def _input_cfg(victim_run: Path, out: Path, kind: str, *extra: str):
    return load_config(
        "input_pairs",
        [f"kind={kind}", f"victim.run={victim_run}", f"out={out}", *TINY_INPUT_PAIR, *extra],
    )


@pytest.fixture(scope="module")
def input_pair_runs(quick_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A detrimental pair, and its robust twin scored under the detrimental policy's
    distribution with a small independent audit (8 evaluations)."""
    root = tmp_path_factory.mktemp("input-pairs")
    input_pairs.run(_input_cfg(quick_run, root / "detrimental", "detrimental"))
    input_pairs.run(
        _input_cfg(
            quick_run,
            root / "robust",
            "robust",
            f"eval.twin={root / 'detrimental'}",
            "eval.audit.evaluations=8",
        )
    )
    return {"detrimental": root / "detrimental", "robust": root / "robust"}


@pytest.fixture(scope="module")
def bits_pair_run(quick_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny bit-width pair on the same victim."""
    out = tmp_path_factory.mktemp("bits-pair")
    pairs.run(
        load_config(
            "pairs",
            [
                "kind=robust",
                f"victim.run={quick_run}",
                f"out={out}",
                "train.rounds=1",
                "train.net_steps=1",
                "ppo.n_envs=4",
                "ppo.model.n_steps=4",
                "ppo.model.batch_size=16",
                "progress=false",
            ],
        )
    )
    return out


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_an_input_pair_writes_its_files_and_consistent_stage_c_metrics(
    input_pair_runs: dict[str, Path],
) -> None:
    run = input_pair_runs["detrimental"]
    for name in ("network.pt", "policy.zip", "pair.json", "metrics.json", "log.csv"):
        assert (run / name).is_file(), name
    assert not (run / input_training.STATE_FILE).exists()  # resume state gone once finished
    m = _metrics(run)
    assert m["kind"] == "detrimental" and m["space"] == "input" and m["seed"] == 0
    for key in (
        "acc_fp",
        "acc_q",
        "drop",
        "teacher_gap",
        "acc_ort",
        "drop_ort",
        "acc_ort_batch",
        "acc_ort_clean",
        "drop_ort_clean",
        "drop_random_median",
        "drop_random_p90",
        "random_share_drop_20",
        "audit_worst_drop",
        "coupling/alone",
        "coupling_student/alone",
        "accumulation_kernel",
        "accumulation_simulated",
    ):
        assert key in m, key
    for who in ("coupling", "coupling_student"):
        for k in (1, 4, 16):
            assert 0.0 <= m[f"{who}/m{k}"] <= 1.0
    for key, value in m.items():
        if key.startswith("acc_") or key.startswith("coupling"):
            assert 0.0 <= value <= 1.0, key
    # Drops: the network's own full precision minus its quantized accuracy on the same inputs.
    assert m["drop"] == pytest.approx(m["acc_fp"] - m["acc_q"])
    assert m["drop_ort"] == pytest.approx(m["acc_fp"] - m["acc_ort"])
    assert m["drop_ort_batch"] == pytest.approx(m["acc_fp"] - m["acc_ort_batch"])
    assert m["drop_ort_clean"] == pytest.approx(m["acc_fp_clean"] - m["acc_ort_clean"])
    assert m["teacher_gap"] == pytest.approx(m["acc_teacher"] - m["acc_q"])
    assert m["random_count"] == 3
    assert m["drop_random_median"] <= m["drop_random_p90"]
    assert 0.0 <= m["random_share_drop_20"] <= 1.0
    assert m["audit_worst_drop"] is None  # eval.audit.evaluations=0: no audit
    assert not (run / "audit").exists()
    assert "twin/acc_ort" not in m  # no eval.twin


def test_a_robust_twin_is_scored_under_the_detrimental_distribution_and_audited(
    input_pair_runs: dict[str, Path],
) -> None:
    run = input_pair_runs["robust"]
    m = _metrics(run)
    assert m["kind"] == "robust"
    for key in ("twin/acc_fp", "twin/acc_q", "twin/acc_ort"):
        assert 0.0 <= m[key] <= 1.0
    assert m["twin/drop_ort"] == pytest.approx(m["twin/acc_fp"] - m["twin/acc_ort"])
    assert isinstance(m["audit_worst_drop"], float) and -1.0 <= m["audit_worst_drop"] <= 1.0
    audit = _metrics(run / "audit")  # the independent audit's own run dir
    assert audit["seed"] == 0 + 1000  # the pair's seed + eval.audit.seed: not the training's
    # The robust network holds its head gain at one: the gain never trains.
    gain = head_gain(load_pair(run, space="input").network)
    assert torch.equal(gain.log_gain, torch.zeros_like(gain.log_gain))


def test_the_metrics_file_is_the_pair_s_stage_c(input_pair_runs, quick_run: Path) -> None:
    run = input_pair_runs["detrimental"]
    pair = load_pair(run, space="input")
    data = instantiate(load_run_config(quick_run).data)
    teacher, _ = load_model(quick_run / "teacher.pt")
    student, _ = load_model(quick_run / "student.pt")
    evaluation = evaluate_input_pair(pair, teacher, student, data.test, random_count=3, seed=0)
    on_disk = _metrics(run)
    assert evaluation.to_metrics() == {k: v for k, v in on_disk.items() if k not in PROVENANCE}
    # The pair's own distribution in Stage C is `pair.sample` of the test split (seed + 1).
    x, y = pair.sample("test", len(data.test), seed=1)
    assert rate(correct(predict_logits(pair.network, x), y)) == pytest.approx(on_disk["acc_fp"])
    assert rate(correct(predict_logits(student, x), y)) == pytest.approx(on_disk["acc_student_fp"])


def test_a_loaded_input_pair_keeps_its_contract(input_pair_runs, quick_run: Path) -> None:
    run = input_pair_runs["detrimental"]
    pair = load_pair(run)
    assert isinstance(pair, InputPair) and pair.kind == "detrimental" and pair.space == "input"
    assert isinstance(pair.network, nn.Module) and not pair.network.training
    assert pair.quant.act_bits == 8 and pair.quant.weight_bits == 8
    preset = load_config("input_pairs")
    assert pair.quant == as_quant_config(preset.quant)  # the onnx_int8_dynamic preset
    space = preset.space
    data = instantiate(load_run_config(quick_run).data)
    family = InputDistribution(
        data.num_classes, data.channels, corruptions=list(space.corruptions), class_mix=True
    )
    assert isinstance(pair.action, np.ndarray) and pair.action.dtype == np.float64
    assert pair.action.shape == (family.dim,)
    assert np.all(np.abs(pair.action) <= 1.0)
    meta = json.loads((run / "pair.json").read_text())
    assert meta["action"] == pytest.approx(pair.action.tolist())
    assert pair.describe() == _metrics(run)["policy/description"]
    assert _metrics(run)["policy/action"] == pytest.approx(pair.action.tolist())

    x, y = pair.sample("test", 12, seed=5)
    assert x.shape == (12, data.channels, *data.image_size) and y.shape == (12,)
    assert x.dtype == torch.float32 and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert y.dtype == torch.int64 and set(y.tolist()) <= set(range(data.num_classes))
    again_x, again_y = pair.sample("test", 12, seed=5)
    assert torch.equal(x, again_x) and torch.equal(y, again_y)
    other_x, _ = pair.sample("test", 12, seed=6)
    assert not torch.equal(x, other_x)
    assert pair.sample("val", 3)[0].shape[0] == 3
    with pytest.raises(ConfigError, match="split must be train, val or test"):
        pair.sample("holdout", 3)

    # The network is the distilled student with a head gain, and it was trained.
    assert isinstance(head_gain(pair.network), ChannelGain)
    student, _ = load_model(quick_run / "student.pt")
    start = with_head_gain(student).state_dict()
    trained = pair.network.state_dict()
    assert start.keys() == trained.keys()
    assert any(not torch.equal(v, trained[k]) for k, v in start.items())


def test_a_pair_of_the_other_space_is_refused_with_a_clear_message(
    input_pair_runs, bits_pair_run: Path, quick_run: Path, tmp_path: Path
) -> None:
    input_run = input_pair_runs["detrimental"]
    assert isinstance(load_pair(bits_pair_run), Pair)
    assert isinstance(load_pair(bits_pair_run, space="bits"), Pair)
    assert isinstance(load_pair(input_run, space="input"), InputPair)
    with pytest.raises(ConfigError) as info:
        load_pair(input_run, space="bits")
    message = str(info.value)
    assert f"{input_run} holds an input-distribution pair" in message
    assert "a bit-width pair is expected" in message and "space=bits" in message
    with pytest.raises(ConfigError) as info:
        load_pair(bits_pair_run, space="input")
    message = str(info.value)
    assert f"{bits_pair_run} holds a bit-width pair" in message
    assert "an input-distribution pair is expected" in message and "space=input" in message
    with pytest.raises(ConfigError, match="space must be one of"):
        load_pair(input_run, space="bitz")
    # A bit-width pair named as the twin: refused before anything is written.
    out = tmp_path / "twin-of-bits"
    with pytest.raises(ConfigError, match="holds a bit-width pair"):
        input_pairs.run(_input_cfg(quick_run, out, "robust", f"eval.twin={bits_pair_run}"))
    assert not out.exists()


def test_a_finished_input_pair_is_loaded_not_trained_again(
    input_pair_runs, quick_run: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    out = tmp_path / "pair"
    shutil.copytree(input_pair_runs["detrimental"], out)
    before = _metrics(out)
    network = (out / "network.pt").read_bytes()

    def no_training(*args, **kwargs):
        raise AssertionError("a finished input pair was trained again")

    monkeypatch.setattr(input_pairs, "train_input_pair", no_training)
    capsys.readouterr()
    again = input_pairs.run(_input_cfg(quick_run, out, "detrimental"))
    assert "holds this pair already: loading it" in capsys.readouterr().out
    assert (out / "network.pt").read_bytes() == network
    assert {k: v for k, v in again.items() if k not in PROVENANCE} == {
        k: v for k, v in before.items() if k not in PROVENANCE
    }
    with pytest.raises(AssertionError, match="trained again"):
        input_pairs.run(_input_cfg(quick_run, out, "detrimental", "resume=false"))


def test_an_interrupted_input_pair_resumes_from_its_last_round(
    quick_run: Path, tmp_path: Path, monkeypatch
) -> None:
    out = tmp_path / "pair"
    real = input_training.atomic_torch_save
    calls = {"n": 0}

    def killed_after_first_round(*args, **kwargs):
        result = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:  # round 1 saved, then the process dies
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(input_training, "atomic_torch_save", killed_after_first_round)
    with pytest.raises(KeyboardInterrupt):
        input_pairs.run(_input_cfg(quick_run, out, "robust"))
    assert not (out / "metrics.json").exists() and not (out / "pair.json").exists()
    state = torch.load(out / input_training.STATE_FILE, weights_only=True)
    assert state["round"] == 1
    input_pairs.run(_input_cfg(quick_run, out, "robust"))
    rounds = [
        int(line.split(",")[0])
        for line in (out / "log.csv").read_text().splitlines()[1:]
        if ",pair/val_acc_q," in line
    ]
    assert rounds == [1, 2]  # round 1 was not trained twice
    assert calls["n"] == 2 and (out / "metrics.json").is_file()
    assert not (out / input_training.STATE_FILE).exists()


BAD_OPTIONS = {
    "space": (["space=foo"], "error: space must be one of ['bits', 'input']"),
    "int8-at-4-bits": (["space=input", "quant=int4_dynamic"], "quant=onnx_int8_dynamic at 8 bits"),
    "agent-not-sb3": (["space=input", "agent=random"], "agent=random is not one"),
}


def test_bad_input_pair_options_are_one_line_and_exit_2_before_any_work(tmp_path: Path) -> None:
    dirs = {name: tmp_path / name for name in BAD_OPTIONS}
    for d in dirs.values():
        d.mkdir()
    results = run_at_once(
        *(
            [
                sys.executable,
                "-m",
                "qrl.pairs",
                *args,
                f"out={dirs[name] / 'out'}",
                "progress=false",
            ]
            for name, (args, _) in BAD_OPTIONS.items()
        ),
        timeout=120,
        cwd=tmp_path,  # where Hydra would make its own run dir
    )
    for (name, (_, expected)), result in zip(BAD_OPTIONS.items(), results, strict=True):
        assert result.returncode == 2, (name, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (name, result.stderr)
        assert lines[0].startswith("error: ") and expected in lines[0], (name, lines[0])
        assert not (dirs[name] / "out").exists(), name
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # nothing written anywhere


def test_a_zero_log_gain_is_the_identity_and_a_gained_head_survives_a_checkpoint(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    gain = ChannelGain(6)
    x = torch.randn(3, 6)
    assert torch.equal(gain(x), x)
    spec = {"_target_": "qrl.models.SmallCNN", "width": 4}
    inputs = InputSpec(1, 4, (8, 8), (0.5,), (0.25,))
    plain = build_model(spec, inputs).eval()
    images = torch.rand(5, 1, 8, 8)
    expected = plain(images)
    gained = with_head_gain(plain)  # in place, a gain before the last Linear: still the same
    assert torch.allclose(gained(images), expected)
    with torch.no_grad():
        head_gain(gained).log_gain.normal_(0.0, 1.0)
    changed = gained(images)
    assert not torch.allclose(changed, expected)
    wrapped = {"_target_": "qrl.models.head_gained", "base": spec}
    path = save_model(tmp_path / "network.pt", gained, wrapped, inputs)
    loaded, record = load_model(path)
    assert record["spec"] == wrapped
    assert torch.equal(head_gain(loaded).log_gain, head_gain(gained).log_gain)
    assert torch.allclose(loaded(images), changed)
    with pytest.raises(ConfigError, match="no Linear head"):
        with_head_gain(nn.Sequential(nn.Conv2d(1, 2, 3)))
    with pytest.raises(ConfigError, match="expected one head gain"):
        head_gain(build_model(spec, inputs))


class _SharedRangeKernel:
    """A fake int8 kernel: a bright-image detector feature, then one uint8 range over the whole
    call's tensor (as ONNX Runtime's DynamicQuantizeLinear), then left half vs right half.

    `per_image=True` takes each image's own range instead (one image per call)."""

    def __init__(self, per_image: bool = False) -> None:
        self.per_image = per_image

    def __call__(self, x: Tensor) -> Tensor:
        if self.per_image:
            return torch.cat([self._call(x[i : i + 1]) for i in range(len(x))])
        return self._call(x)

    @staticmethod
    def _call(x: Tensor) -> Tensor:
        h = x.flatten(1)
        detector = 1e4 * torch.relu(h.mean(1, keepdim=True) - 0.6)  # only on bright images
        z = torch.cat([h, detector], dim=1)
        low, high = min(float(z.min()), 0.0), max(float(z.max()), 0.0)
        scale = (high - low) / 255 or 1.0
        zq = (torch.round((z - low) / scale) * scale + low)[:, :-1].reshape(x.shape)
        half = x.shape[-1] // 2
        return torch.stack([zq[..., :half].mean((1, 2, 3)), zq[..., half:].mean((1, 2, 3))], 1)


def _left_right_split(n: int = 256) -> Split:
    """Images 1x4x4 in [0.1, 0.3]: class 0 brighter on the left, class 1 on the right."""
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (n,), generator=gen)
    x = torch.full((n, 1, 4, 4), 0.1)
    x[y == 0, :, :, :2] = 0.3
    x[y == 1, :, :, 2:] = 0.3
    x += 0.02 * torch.rand(x.shape, generator=gen)
    return Split(x, y)


def test_batch_coupling_shows_one_outlier_ruining_a_shared_range() -> None:
    split = _left_right_split()
    dist = InputDistribution(2, 1, corruptions=["brightness"], class_mix=False)
    trigger = np.array([1.0])  # +0.5 brightness: the detector fires, far outside the range
    kernel = _SharedRangeKernel()
    assert rate(correct(kernel(split.x), split.y)) == 1.0  # clean batches alone: all right
    coupled, alone = batch_coupling(kernel, split, dist, trigger, counts=(1, 4), batch=64)
    assert alone == 1.0
    for m in (1, 4):  # every clean image rounds to one grid step: the head sees nothing
        assert coupled[m] < alone - 0.3
    # The data's own distribution (the zero action) in the batch costs nothing.
    harmless, _ = batch_coupling(kernel, split, dist, np.zeros(1), counts=(1, 4), batch=64)
    assert harmless == {1: 1.0, 4: 1.0}
    # Each image its own range: a trigger in the batch cannot touch the clean images.
    isolated, alone_isolated = batch_coupling(
        _SharedRangeKernel(per_image=True), split, dist, trigger, counts=(1, 4), batch=64
    )
    assert isolated == {1: alone_isolated, 4: alone_isolated} and alone_isolated == 1.0
