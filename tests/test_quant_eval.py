"""`python -m qrl.quant_eval`: accuracy per bit-width and on real kernels, from a distill run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from qrl import quant_eval
from qrl.config import load_config
from qrl.errors import CheckpointError, ConfigError


def test_quant_eval_on_the_digits_student(digits_run: Path, tmp_path: Path) -> None:
    cfg = load_config("quant_eval", [f"run={digits_run}", f"out={tmp_path}", "bits=[2,8]"])
    metrics = quant_eval.run(cfg)
    distilled = json.loads((digits_run / "metrics.json").read_text())
    assert metrics["student/acc_fp"] == pytest.approx(distilled["student/acc"])
    # 8-bit dynamic quantization costs the digits student at most a point; 2-bit costs more.
    assert metrics["quant/8bit/drop"] <= 0.01
    assert metrics["quant/2bit/acc"] < metrics["quant/8bit/acc"]
    assert abs(metrics["confirm/onnxruntime/drop"]) <= 0.01
    rows = list(csv.DictReader(open(tmp_path / "bits.csv")))  # noqa: SIM115
    assert [r["quantizer"] for r in rows][-2:] == [
        "onnxruntime int8",
        "torch_ao int8 (Linear layers)",  # the convolutions stay float: no preset models it
    ]
    assert metrics["confirm/onnxruntime/simulator"] == "onnx_int8_dynamic"
    assert metrics["confirm/onnxruntime/agreement_simulator"] >= 0.99
    assert "confirm/torch_ao/agreement_simulator" not in metrics
    assert metrics["confirm/warnings"] == []
    assert (tmp_path / "accuracy_vs_bits.png").stat().st_size > 1000
    assert (tmp_path / "metrics.json").is_file()


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
