"""`python -m qrl.quant_eval`: accuracy per bit-width and on real kernels, from a distill run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from qrl import quant_eval
from qrl.config import load_config
from qrl.errors import CheckpointError, ConfigError


@pytest.fixture(scope="module")
def evaluated(digits_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """`python -m qrl.quant_eval` on the digits student (bits 2 and 8, both kernels), once."""
    out = tmp_path_factory.mktemp("quant-eval")
    cfg = load_config("quant_eval", [f"run={digits_run}", f"out={out}", "bits=[2,8]"])
    return out, quant_eval.run(cfg)


def test_quant_eval_on_the_digits_student(digits_run: Path, evaluated: tuple[Path, dict]) -> None:
    tmp_path, metrics = evaluated
    distilled = json.loads((digits_run / "metrics.json").read_text())
    assert metrics["student/acc_fp"] == pytest.approx(distilled["student/acc"])
    # 8-bit dynamic quantization costs the digits student at most a point; 2-bit costs more.
    assert metrics["quant/8bit/drop"] <= 0.01
    assert metrics["quant/2bit/acc"] < metrics["quant/8bit/acc"]
    rows = list(csv.DictReader(open(tmp_path / "bits.csv")))  # noqa: SIM115
    assert [r["quantizer"] for r in rows][-2:] == [
        "onnxruntime int8",
        "torch_ao int8 (Linear layers)",  # the convolutions stay float: no preset models it
    ]
    assert metrics["confirm/onnxruntime/simulator"] == "onnx_int8_dynamic"
    assert 0 <= metrics["confirm/onnxruntime/agreement_simulator"] <= 1
    assert "confirm/torch_ao/agreement_simulator" not in metrics
    assert (tmp_path / "accuracy_vs_bits.png").stat().st_size > 1000
    assert (tmp_path / "metrics.json").is_file()


@pytest.mark.exact_int8
def test_onnxruntime_int8_is_what_its_simulator_says(evaluated: tuple[Path, dict]) -> None:
    """Where ONNX Runtime's 8-bit kernel accumulates exactly, `onnx_int8_dynamic` predicts it:
    the same drop (at most a point) and the same answers."""
    _, metrics = evaluated
    assert abs(metrics["confirm/onnxruntime/drop"]) <= 0.01
    assert metrics["confirm/onnxruntime/agreement_simulator"] >= 0.99
    assert metrics["confirm/warnings"] == []


def test_quant_eval_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"teacher\.pt does not exist"):
        quant_eval.run(load_config("quant_eval", [f"run={tmp_path}", f"out={tmp_path / 'o'}"]))
    with pytest.raises(ConfigError, match="bits entries must be an integer from 2 to 8"):
        quant_eval.run(
            load_config("quant_eval", [f"run={tmp_path}", f"out={tmp_path / 'o'}", "bits=[1]"])
        )
    assert not (tmp_path / "o" / "metrics.json").exists()


def _stressed_run(digits_run: Path, tmp_path: Path) -> Path:
    """A copy of the distill run whose student has a quarter of its third block rescaled."""
    import shutil

    from qrl.checkpoints import load_model, save_model
    from qrl.stress import rescale_channels

    run = tmp_path / "stressed-run"
    shutil.copytree(digits_run, run)
    student, record = load_model(run / "student.pt")
    stressed = rescale_channels(student, 2, 200.0, fraction=0.25)
    save_model(run / "student.pt", stressed, record["spec"], record["input_spec"])
    return run


def test_quant_eval_says_when_the_simulator_cannot_be_trusted(
    digits_run: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    run = _stressed_run(digits_run, tmp_path)
    # 7-bit ONNX Runtime weights: modelled exactly on every CPU (see qrl.quant.cpu).
    overrides = [f"run={run}", "bits=[8]", "backends=[onnxruntime]", "onnx_reduce_range=true"]
    metrics = quant_eval.run(load_config("quant_eval", [*overrides, f"out={tmp_path / 'a'}"]))
    assert metrics["student/acc_fp"] > 0.9 and metrics["confirm/onnxruntime/acc"] < 0.5
    assert (
        abs(metrics["confirm/onnxruntime/simulator_acc"] - metrics["confirm/onnxruntime/acc"])
        <= 0.02
    )
    assert metrics["confirm/warnings"] == []
    # A preset that quantizes the unfolded network per channel misses the collapse.
    monkeypatch.setattr("qrl.quant_eval.mirror_preset", lambda name, **_: "int8_dynamic")
    metrics = quant_eval.run(load_config("quant_eval", [*overrides, f"out={tmp_path / 'b'}"]))
    assert len(metrics["confirm/warnings"]) == 1
    assert "int8_dynamic does not predict onnxruntime" in capsys.readouterr().out


def test_quant_eval_accepts_progress_false_and_its_bar_follows_it(
    quick_run: Path, tmp_path: Path, monkeypatch
) -> None:
    import subprocess
    import sys

    made: list[object] = []
    real_tqdm = quant_eval.tqdm

    def recording_tqdm(*args, **kwargs):
        made.append(kwargs.get("disable"))
        return real_tqdm(*args, **kwargs)

    monkeypatch.setattr(quant_eval, "tqdm", recording_tqdm)
    base = [f"run={quick_run}", "bits=[4]", "backends=[]"]
    for progress, disable in (("false", True), ("true", None)):
        cfg = load_config(
            "quant_eval", [*base, f"progress={progress}", f"out={tmp_path / progress}"]
        )
        assert quant_eval.run(cfg)["quant/4bit/acc"] >= 0
        assert made.pop() is disable  # true: a bar on a terminal (tqdm's disable=None)
    # The command line takes it too, as every other task's does.
    where = f"hydra.run.dir={tmp_path / 'cli'}"
    result = subprocess.run(
        [sys.executable, "-m", "qrl.quant_eval", *base, "progress=false", where],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "cli" / "metrics.json").is_file()


def test_the_readme_s_quant_eval_example_points_where_the_demo_writes() -> None:
    # `make demo` (`qrl.reproduce` into runs/demo) writes each seed's distill run to
    # runs/demo/seed<k>/distill, as the README's stage table says.
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    line = next(x for x in readme.splitlines() if x.startswith("python -m qrl.quant_eval run="))
    assert line.split("run=")[1].split()[0] == "runs/demo/seed0/distill"
    assert "`seed0/distill/teacher.pt`, `student.pt`" in readme
