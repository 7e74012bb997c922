"""`device=auto|cpu|cuda|cuda:N`: one owner, one clear error, one GPU per parallel job."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from qrl import devices, sweeps
from qrl.devices import resolve_device
from qrl.errors import ConfigError


def test_cpu_and_auto_without_a_gpu_are_the_cpu() -> None:
    assert resolve_device("cpu", cuda_count=4) == torch.device("cpu")
    assert resolve_device("auto", cuda_count=0) == torch.device("cpu")
    assert resolve_device(None, cuda_count=0) == torch.device("cpu")


def test_parallel_jobs_each_get_their_own_gpu() -> None:
    picked = [resolve_device("auto", job_num=k, cuda_count=4) for k in range(6)]
    assert [str(d) for d in picked] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0", "cuda:1"]
    assert resolve_device("cuda", job_num=3, cuda_count=2) == torch.device("cuda:1")
    assert resolve_device("auto", cuda_count=3) == torch.device("cuda:0")  # a single run
    assert resolve_device("cuda:1", job_num=0, cuda_count=2) == torch.device("cuda:1")  # as named


def test_the_job_number_comes_from_the_running_sweep(monkeypatch) -> None:
    job = sweeps.Job(num=5, out=None, overrides=[], multirun=True)  # type: ignore[arg-type]
    monkeypatch.setattr(sweeps, "current_job", lambda: job)
    monkeypatch.setattr(devices, "cuda_device_count", lambda: 4)
    assert sweeps.task_device(OmegaConf.create({"device": "auto"})) == torch.device("cuda:1")
    single = sweeps.Job(num=0, out=None, overrides=[], multirun=False)  # type: ignore[arg-type]
    monkeypatch.setattr(sweeps, "current_job", lambda: single)
    assert sweeps.task_device(OmegaConf.create({})) == torch.device("cuda:0")


@pytest.mark.parametrize(
    ("spec", "count", "match"),
    [
        ("gpu", 1, r"device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        ("cpu:0", 1, "device must be"),
        ("cuda:2", 2, r"has 2 CUDA device\(s\): use cuda:0 to cuda:1"),
        ("cuda", 0, "sees no CUDA device on this machine .*: use device=auto or device=cpu"),
        ("cuda:0", 0, "sees no CUDA device"),
    ],
)
def test_a_device_that_cannot_be_had_is_one_clear_error(spec: str, count: int, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        resolve_device(spec, cuda_count=count)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_this_cpu_only_machine_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"device=cuda but torch .* sees no CUDA device"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_on_a_cpu_machine_is_one_line_and_writes_nothing(tmp_path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "qrl.search", "device=cuda", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: device=cuda but torch ") and "device=auto or device=cpu" in line
    assert not (tmp_path / "run" / "config.yaml").exists()
    with pytest.raises(ConfigError, match="device=cuda:1 but torch"):
        from qrl import distill
        from qrl.config import load_config

        distill.run(load_config("distill", ["device=cuda:1", f"out={tmp_path / 'd'}"]))
    assert not (tmp_path / "d").exists()
    with pytest.raises(ConfigError, match="device=cuda but torch"):
        from qrl import quant_eval

        cfg = ["device=cuda", f"run={tmp_path / 'some-run'}", f"out={tmp_path / 'q'}"]
        quant_eval.run(load_config("quant_eval", cfg))
    assert not (tmp_path / "q").exists()
    with pytest.raises(ConfigError, match="device=cuda but torch"):
        from qrl import pairs

        pairs.run(load_config("pairs", ["device=cuda", f"out={tmp_path / 'p'}"]))
    assert not (tmp_path / "p").exists()
    with pytest.raises(ConfigError, match="device=cuda but torch"):
        from qrl import reproduce

        reproduce.run(load_config("reproduce", ["device=cuda", f"out={tmp_path / 'r'}"]))
    assert not (tmp_path / "r").exists()


def test_auto_on_this_cpu_machine_gives_the_numbers_of_cpu(tmp_path) -> None:
    """device=auto resolves to the CPU here and changes nothing: weights and search agree
    bit for bit with device=cpu (and with the code before `device` existed: see the note)."""
    from qrl import distill, search
    from qrl.config import load_config
    from tests.conftest import QUICK

    if torch.cuda.is_available():
        pytest.skip("auto is a GPU on this machine")
    tiny = ["agent=ppo", "budget.evaluations=32", "env.batch_size=32", "eval.samples=128"]
    tiny += ["eval.bootstrap=50", "confirm.backends=[onnxruntime]", "progress=false"]
    tiny += ["archive.grid=4"]
    found = {}
    for device in ("auto", "cpu"):
        out = tmp_path / device
        distill.run(load_config("distill", [*QUICK, f"device={device}", f"out={out / 'd'}"]))
        victim = [f"victim.run={out / 'd'}", f"device={device}", f"out={out / 's'}"]
        metrics = search.run(load_config("search", [*tiny, *victim]))
        student = torch.load(out / "d" / "student.pt", weights_only=True)["state_dict"]
        found[device] = (metrics, student)
    (auto, auto_student), (cpu, cpu_student) = found["auto"], found["cpu"]
    assert all(torch.equal(auto_student[k], cpu_student[k]) for k in cpu_student)
    skip = {"wall_time_s"}
    assert {k: v for k, v in auto.items() if k not in skip} == {
        k: v for k, v in cpu.items() if k not in skip
    }
    assert "confirm/onnxruntime/gap" in auto  # the real int8 kernels ran (on the CPU)


def test_a_run_dir_from_before_device_existed_still_resumes(tmp_path) -> None:
    from qrl.runs import start_run

    old = OmegaConf.create(  # saved before `device` and `agent.model.device: auto` existed
        {"out": str(tmp_path), "seed": 0, "agent": {"name": "ppo", "model": {"device": "cpu"}}}
    )
    start_run(old)
    new = OmegaConf.merge(old, {"device": "auto", "agent": {"model": {"device": "auto"}}})
    start_run(new)  # the same run: no "another config" error
    other = OmegaConf.merge(new, {"agent": {"model": {"gamma": 0.5}}})
    with pytest.raises(ConfigError, match=r"agent\.model\.gamma"):
        start_run(other)
