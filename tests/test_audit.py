"""The audit API and CLI on models the tests make themselves; the planted vulnerability."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from qrl.audit import AuditResult, audit
from qrl.checkpoints import InputSpec, save_model
from qrl.data import load_data
from qrl.errors import CheckpointError, DataError
from qrl.models import MLP
from qrl.planted import plant_brightness_outlier, planted_digits_mlp
from qrl.quant import QuantConfig, preset, quantized_copy
from qrl.searching import SearchResult
from tests.conftest import run_at_once

FAST = ["env.batch_size=64", "eval.samples=256", "eval.bootstrap=300", "archive.grid=4"]
SPEC = {"_target_": "qrl.models.MLP", "hidden": [32]}


@pytest.fixture(scope="module")
def small_model() -> tuple[MLP, object]:
    data = load_data("synthetic", n=400, size=8, num_classes=4)
    torch.manual_seed(0)
    model = MLP(1, 4, (8, 8), hidden=(32,), mean=data.mean, std=data.std)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        loss = torch.nn.functional.cross_entropy(model(data.train.x), data.train.y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), data


def test_audit_api_returns_a_result_with_the_gap_in_words(small_model, tmp_path: Path) -> None:
    model, data = small_model
    x = torch.cat([data.train.x, data.val.x, data.test.x])
    y = torch.cat([data.train.y, data.val.y, data.test.y])
    result = audit(
        model,
        (x, y),
        quant="int4_dynamic",
        space="input",
        agent="random",
        evaluations=12,
        seed=0,
        out=tmp_path / "a",
        overrides=FAST,
        progress=False,
    )
    assert isinstance(result, AuditResult)
    # the gap is the teacher's (here the model's own) accuracy minus the quantized one's
    assert result.gap == pytest.approx(result.acc_teacher - result.acc_q)
    assert result.gap_ci[0] <= result.gap <= result.gap_ci[1]
    assert result.description and len(result.archive) == 10
    assert result.policy.shape == (
        10 + 4,
    )  # 7 corruptions in 10 dims (translate 2, occlusion 3) + 4 classes
    assert result.confirm_gap is not None  # an MLP: torch.ao and ONNX Runtime both apply
    assert "confirm/torch_ao/gap" in result.metrics
    assert result.metrics["eval/acc_teacher"] == result.metrics["eval/acc_fp"]  # teacher = model
    assert "held-out drop" in str(result)


def test_audit_measures_the_drop_by_default_and_the_teacher_gap_beside_it(
    small_model, tmp_path: Path
) -> None:
    model, data = small_model
    torch.manual_seed(1)
    poor_teacher = MLP(1, 4, (8, 8), hidden=(8,)).eval()  # untrained: near-chance accuracy
    kwargs = dict(agent="random", evaluations=6, overrides=FAST, progress=False)
    result = audit(model, data, poor_teacher, out=tmp_path / "drop", **kwargs)  # type: ignore[arg-type]
    assert result.reference == "student" and result.metrics["eval/reference"] == "student"
    assert result.gap == pytest.approx(result.acc_fp - result.acc_q) == pytest.approx(result.drop)
    assert result.teacher_gap == pytest.approx(result.acc_teacher - result.acc_q)
    assert abs(result.teacher_gap - result.gap) > 0.1  # two different numbers, both reported
    assert "held-out drop (full precision - quantized)" in str(result)
    by_teacher = audit(
        model,
        data,
        poor_teacher,
        out=tmp_path / "teacher",
        **{**kwargs, "overrides": [*FAST, "env.reference=teacher"]},  # type: ignore[arg-type]
    )
    assert by_teacher.reference == "teacher"
    assert by_teacher.gap == pytest.approx(by_teacher.teacher_gap)


def test_audit_takes_config_objects_and_datasets(small_model, tmp_path: Path) -> None:
    model, data = small_model
    dataset = TensorDataset(data.test.x.repeat(3, 1, 1, 1), data.test.y.repeat(3))
    result = audit(
        model,
        dataset,
        quant=QuantConfig(act_bits=3, act_granularity="per_tensor"),
        space={"mode": "bits"},
        agent={"name": "es", "kind": "cma", "sigma0": 0.3},
        evaluations=10,
        out=tmp_path / "b",
        overrides=FAST,
        progress=False,
    )
    assert result.metrics["evaluations"] == 10
    assert result.description.startswith("bits ")
    assert result.confirm_gap is None  # bit-width policies have no int8-kernel counterpart


def test_model_that_cannot_take_the_data_is_a_clear_error(tmp_path: Path) -> None:
    model = MLP(1, 4, (8, 8), hidden=(16,))
    x, y = torch.rand(60, 1, 12, 12), torch.arange(60) % 4
    with pytest.raises(
        CheckpointError, match=r"MLP cannot take tensors images shaped \(1, 12, 12\)"
    ):
        audit(model, (x, y), evaluations=2, out=tmp_path, progress=False)


def test_the_qrl_audit_module_is_the_audit_function(small_model, tmp_path: Path) -> None:
    import qrl

    model, data = small_model
    result = qrl.audit(
        model,
        data,
        agent="random",
        evaluations=4,
        out=tmp_path / "m",
        overrides=FAST,
        progress=False,
    )
    assert isinstance(result, AuditResult) and result.metrics["evaluations"] == 4
    assert result.run_dir == tmp_path / "m" and (result.run_dir / "metrics.json").is_file()


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (torch.rand(60, 2, 8, 8), torch.arange(60) % 4, r"C in \{1, 3\} .*got \(60, 2, 8, 8\)"),
        (torch.rand(60, 1, 4, 4), torch.arange(60) % 4, r"H, W >= 8, got \(60, 1, 4, 4\)"),
        (torch.rand(60, 1, 8, 8), torch.arange(59) % 4, r"labels must be shaped \(60,\)"),
        (torch.rand(60, 1, 8, 8), torch.arange(60) % 5, r"labels span 5 classes .*gives 4 logits"),
    ],
)
def test_bad_audit_data_is_blamed_before_anything_is_written(
    small_model, tmp_path: Path, x: torch.Tensor, y: torch.Tensor, match: str
) -> None:
    model, _ = small_model
    with pytest.raises(DataError, match=match):
        audit(model, (x, y), evaluations=2, out=tmp_path / "r", progress=False)
    if len(x) == len(y):  # a TensorDataset cannot be made otherwise
        with pytest.raises(DataError, match=match):
            audit(model, TensorDataset(x, y), evaluations=2, out=tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


def test_audit_checks_ready_image_data_and_converts_channels_last(small_model) -> None:
    from dataclasses import replace

    from qrl.audit import as_image_data
    from qrl.data import Split

    _, data = small_model
    bad = replace(data, test=Split(data.test.x, data.test.y + 4))
    with pytest.raises(DataError, match=r"test split: labels must be 0..3 for 4 classes"):
        as_image_data(bad)
    last = replace(data, train=Split(data.train.x.permute(0, 2, 3, 1), data.train.y))
    assert as_image_data(last).train.x.shape == data.train.x.shape


def test_a_dataset_of_uint8_images_is_scaled_like_a_tensor_pair(small_model) -> None:
    from qrl.audit import as_image_data

    _, data = small_model
    pixels = (data.test.x * 255).round().to(torch.uint8)
    from_pair = as_image_data((pixels, data.test.y))
    from_dataset = as_image_data(TensorDataset(pixels, data.test.y))
    assert from_dataset.test.x.max() <= 1.0
    assert torch.equal(from_dataset.test.x, from_pair.test.x)


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "qrl.audit", *args]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_command(*args), capture_output=True, text=True, timeout=600)


def test_audit_cli_loads_every_checkpoint_kind(small_model, tmp_path: Path) -> None:
    model, data = small_model
    qrl_ckpt = save_model(tmp_path / "model.pt", model, SPEC, InputSpec.of(data))
    scripted = tmp_path / "model.ts"
    torch.jit.trace(model, data.test.x[:2]).save(str(scripted))
    state = tmp_path / "weights.pt"
    torch.save(model.state_dict(), state)
    common = [
        "data=synthetic",
        "data.n=400",
        "data.num_classes=4",
        "agent=random",
        "budget.evaluations=6",
        "progress=false",
        *FAST,
    ]
    kinds = [
        (qrl_ckpt, []),
        (scripted, ["quant=int8_dynamic", "quant.backend=onnxruntime"]),  # real kernels only
        (state, ["+model.spec._target_=qrl.models.MLP", "+model.spec.hidden=[32]"]),
    ]
    outs = [tmp_path / f"run{i}" for i in range(len(kinds))]
    results = run_at_once(
        *(
            _command(f"model.path={path}", *common, *extra, f"hydra.run.dir={out}")
            for (path, extra), out in zip(kinds, outs, strict=True)
        )
    )
    for out, result in zip(outs, results, strict=True):
        assert result.returncode == 0, result.stderr[-2000:]
        assert (out / "metrics.json").is_file() and "held-out gap" in result.stdout


def test_audit_cli_errors_name_what_to_fix(small_model, tmp_path: Path) -> None:
    model, _ = small_model
    scripted = tmp_path / "model.ts"
    torch.jit.trace(model, torch.rand(2, 1, 8, 8)).save(str(scripted))
    state = tmp_path / "weights.pt"
    torch.save(model.state_dict(), state)
    simulated, missing, no_spec, wrong_shape = run_at_once(
        _command(f"model.path={scripted}", "data=synthetic", f"hydra.run.dir={tmp_path / 's'}"),
        _command(f"model.path={tmp_path / 'nope.pt'}", f"hydra.run.dir={tmp_path / 'a'}"),
        _command(f"model.path={state}", "data=synthetic", f"hydra.run.dir={tmp_path / 'b'}"),
        _command(
            f"model.path={state}",
            "data=digits",
            "+model.spec._target_=qrl.models.MLP",
            "+model.spec.hidden=[32]",
            f"hydra.run.dir={tmp_path / 'c'}",
        ),
    )
    assert simulated.returncode == 2 and "quant.backend=onnxruntime" in simulated.stderr
    assert missing.returncode == 2 and "nope.pt does not exist" in missing.stderr
    assert no_spec.returncode == 2 and "+model.spec._target_" in no_spec.stderr
    assert wrong_shape.returncode == 2 and "does not fit model qrl.models.MLP" in wrong_shape.stderr
    assert not (tmp_path / "c" / "metrics.json").exists()


def test_planting_keeps_float_outputs_and_breaks_only_the_bright_region() -> None:
    torch.manual_seed(0)
    base = MLP(1, 10, (8, 8), hidden=(32, 16)).eval()
    planted = plant_brightness_outlier(base, threshold=0.5).eval()
    x = torch.rand(64, 1, 8, 8) * 0.6  # mean pixel 0.3: below the threshold
    bright = (x + 0.5).clamp(0, 1)
    q_base = quantized_copy(base, preset("int4_dynamic")).eval()
    q_planted = quantized_copy(planted, preset("int4_dynamic")).eval()
    with torch.no_grad():
        assert torch.equal(planted(bright), base(bright))  # exact in float
        assert torch.allclose(q_planted(x), q_base(x), atol=1e-4)  # unit silent: no change
        collapsed = q_planted(bright)
        assert float((collapsed - collapsed[:1]).abs().max()) < 1e-4  # every input the same logits


# The planted-vulnerability study of the search issue: budget 500 evaluations, 5 seeds. Found =
# held-out gap >= 0.25 (the unbroken model's gap is ~0; where the unit fires, accuracy collapses
# to ~10%). experiments/README.md reports the numbers of every agent including random.
PLANTED_BUDGET, PLANTED_SEEDS, FOUND = 500, 5, 0.25


@pytest.fixture(scope="module")
def planted() -> tuple[MLP, object]:
    return planted_digits_mlp(seed=0)


# The study: slow (36 s on 2 cores). The same path, small, runs in `make test` below.
@pytest.mark.slow
@pytest.mark.parametrize("agent", ["ppo", "es"])
def test_ppo_and_es_find_the_planted_vulnerability(planted, tmp_path: Path, agent: str) -> None:
    model, data = planted
    quant = preset("int4_dynamic", act_granularity="per_tensor")
    gaps = []
    for seed in range(PLANTED_SEEDS):
        result = audit(
            model,
            data,
            quant=quant,
            agent=agent,
            evaluations=PLANTED_BUDGET,
            seed=seed,
            out=tmp_path / str(seed),
            progress=False,
            overrides=["eval.samples=1024", "eval.bootstrap=300", "confirm.backends=[]"],
        )
        gaps.append(result.gap)
    found = int(np.sum(np.array(gaps) >= FOUND))
    assert found >= 3, f"{agent} found the planted region on {found}/{PLANTED_SEEDS} seeds: {gaps}"


# Brightness and noise only: the planted region is then a large share of the (2-d) space, so
# each agent finds it within a small budget on every seed tried (5 of 5 for both; ppo within
# 32 evaluations, es, a population of 32, within two generations) whatever the CPU the planted
# model was trained on; one success in two seeds is asked for.
SMALL_SPACE = {"corruptions": ["brightness", "noise"], "class_mix": False}
SMALL_BUDGET = {"ppo": 32, "es": 64}


@pytest.mark.parametrize("agent", ["ppo", "es"])
def test_ppo_and_es_find_the_planted_vulnerability_in_a_small_space(
    planted, tmp_path: Path, agent: str
) -> None:
    model, data = planted
    quant = preset("int4_dynamic", act_granularity="per_tensor")
    results = [
        audit(
            model,
            data,
            quant=quant,
            space=SMALL_SPACE,
            agent=agent,
            evaluations=SMALL_BUDGET[agent],
            seed=seed,
            out=tmp_path / str(seed),
            progress=False,
            overrides=[
                "env.batch_size=64",
                "eval.samples=512",
                "eval.bootstrap=100",
                "confirm.backends=[]",
            ],
        )
        for seed in (0, 1)
    ]
    gaps = [r.gap for r in results]
    assert all(r.metrics["evaluations"] == SMALL_BUDGET[agent] for r in results)
    found = [r for r in results if r.gap >= FOUND]
    assert found, f"{agent} found the planted region on no seed: {gaps}"
    # Found means what the planting says: brighter inputs (the unit fires on bright images).
    assert all(r.description.startswith("brightness +") for r in found), [
        r.description for r in found
    ]


MYNET = '''
import torch
from torch import nn


class MyNet(nn.Module):
    """A user's own class: it takes neither in_channels nor image_size, mean or std."""

    def __init__(self, num_classes: int = 10, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
'''


@pytest.fixture
def mynet(tmp_path: Path, monkeypatch) -> Path:
    """`mynet.py` in a folder on sys.path (the folder the CLI then runs in)."""
    (tmp_path / "mynet.py").write_text(MYNET)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_an_own_class_is_built_with_only_the_data_keywords_it_takes(mynet: Path, capsys) -> None:
    import mynet as module

    from qrl.audit import load_any_model

    data = load_data("synthetic", n=100, size=8, num_classes=4)
    torch.save(module.MyNet(num_classes=4, hidden=16).state_dict(), mynet / "weights.pt")
    spec = {"_target_": "mynet.MyNet", "hidden": 16}
    model = load_any_model(mynet / "weights.pt", spec, data)
    assert model(data.test.x[:3]).shape == (3, 4)
    assert capsys.readouterr().out.strip() == (
        "built mynet.MyNet with the data keywords num_classes (not in its signature, not "
        "passed: in_channels, image_size, mean, std)"
    )
    # A whole pickled module: named, never unpickled, and how to save it instead.
    torch.save(module.MyNet(num_classes=4), mynet / "whole.pt")
    with pytest.raises(CheckpointError) as info:
        load_any_model(mynet / "whole.pt", None, data)
    message = str(info.value)
    assert "is a whole module pickled with torch.save(model) (class mynet.MyNet)" in message
    assert "torch.save(model.state_dict(), path)" in message
    assert "+model.spec._target_=mynet.MyNet" in message


def test_audit_cli_audits_an_own_class_from_a_state_dict(mynet: Path) -> None:
    import mynet as module

    torch.manual_seed(0)
    torch.save(module.MyNet(num_classes=4).state_dict(), mynet / "mynet.pt")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "qrl.audit",
            "model.path=mynet.pt",
            "+model.spec._target_=mynet.MyNet",
            "data=synthetic",
            "data.n=400",
            "data.num_classes=4",
            "agent=random",
            "budget.evaluations=6",
            "progress=false",
            "device=cpu",
            *FAST,
            "hydra.run.dir=run",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=mynet,  # `python -m` puts the working folder on sys.path: mynet imports
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "built mynet.MyNet with the data keywords num_classes (not in its" in result.stdout
    assert (mynet / "run" / "metrics.json").is_file()


def test_the_audit_result_comes_from_memory_not_from_its_files(
    small_model, tmp_path: Path, monkeypatch
) -> None:
    import qrl.audit as audit_module

    real = audit_module.search_victim
    written: dict[str, object] = {}

    def then_files_gone(*args, **kwargs):
        found = real(*args, **kwargs)
        for name in ("metrics.json", "archive.json"):  # what the search wrote, then gone
            written[name] = json.loads((tmp_path / "m" / name).read_text())
            (tmp_path / "m" / name).unlink()
        return found

    monkeypatch.setattr(audit_module, "search_victim", then_files_gone)
    model, data = small_model
    kwargs = dict(agent="random", evaluations=4, overrides=FAST, progress=False)
    result = audit(model, data, out=tmp_path / "m", device="cpu", **kwargs)  # type: ignore[arg-type]
    assert isinstance(result.search, SearchResult)
    on_disk = written["metrics.json"]
    # The result's metrics are exactly the keys and values metrics.json got, provenance too.
    assert result.to_metrics() == result.metrics == result.search.to_metrics() == on_disk
    assert result.archive == written["archive.json"] and result.archive
    assert isinstance(on_disk, dict) and on_disk["evaluations"] == 4 and on_disk["seed"] == 0
    assert result.gap == on_disk["eval/gap"] and result.drop == on_disk["eval/drop_fp"]
    assert result.gap_ci == (on_disk["eval/gap_ci_low"], on_disk["eval/gap_ci_high"])
    assert result.teacher_gap == on_disk["eval/teacher_gap"]
    assert result.policy.tolist() == on_disk["policy/action"]
    assert result.description == on_disk["policy/description"]
    assert result.confirm_gap == on_disk["confirm/gap"]
    found = result.search
    assert found.action.tolist() == pytest.approx(on_disk["policy/action"])
    assert set(found.provenance) == {"seed", "git_sha", "wall_time_s", "qrl_version"}
    assert found.evaluations == on_disk["evaluations"] == 4
    assert found.best_batch.index == on_disk["search/evaluations_to_best_batch"]
    assert found.valid == bool(on_disk["eval/valid"]) and found.run_dir == tmp_path / "m"


def test_audit_device_places_the_search_and_leaves_the_caller_s_model_alone(
    small_model, tmp_path: Path
) -> None:
    from qrl.errors import ConfigError

    model, data = small_model
    kwargs = dict(agent="random", evaluations=4, overrides=FAST, progress=False)
    with pytest.raises(ConfigError, match="device must be auto, cpu, cuda or cuda:N"):
        audit(model, data, out=tmp_path / "bad", device="tpu", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "bad").exists()
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="sees no CUDA device"):
            audit(model, data, out=tmp_path / "gpu", device="cuda", **kwargs)  # type: ignore[arg-type]
        assert not (tmp_path / "gpu").exists()
        return
    result = audit(model, data, out=tmp_path / "gpu", device="cuda", **kwargs)  # type: ignore[arg-type]
    assert next(model.parameters()).device.type == "cpu"  # a copy went to the GPU
    on_cpu = audit(model, data, out=tmp_path / "cpu", device="cpu", **kwargs)  # type: ignore[arg-type]
    assert result.metrics["evaluations"] == on_cpu.metrics["evaluations"] == 4
    assert abs(result.acc_fp - on_cpu.acc_fp) <= 0.02
