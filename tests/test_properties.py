"""Property tests: malformed arrays and config values get a `QrlError`, never another exception,
and leave no `metrics.json` behind."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qrl import distill
from qrl.audit import audit
from qrl.config import load_config
from qrl.data import from_tensors, load_data
from qrl.errors import QrlError
from qrl.models import MLP
from tests.conftest import QUICK

# derandomize: CI runs the same examples every time (a failure is then a change, not luck).
SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

SHAPES = hnp.array_shapes(min_dims=1, max_dims=5, min_side=0, max_side=10)
FLOATS = st.one_of(
    st.floats(-2, 300, width=32), st.sampled_from([float("nan"), float("inf"), -float("inf")])
)
ELEMENTS = {
    np.float32: FLOATS,
    np.float64: FLOATS,
    np.uint8: st.integers(0, 255),
    np.int64: st.integers(-3, 300),
    np.bool_: st.booleans(),
}


@st.composite
def arrays(draw: st.DrawFn, shapes: st.SearchStrategy[tuple[int, ...]] = SHAPES) -> np.ndarray:
    """Images or labels of any small shape, dtype and value, NaN and infinity included."""
    dtype = draw(st.sampled_from(sorted(ELEMENTS, key=str)))
    return draw(hnp.arrays(dtype, draw(shapes), elements=ELEMENTS[dtype]))


def labels() -> st.SearchStrategy[np.ndarray]:
    return st.one_of(
        arrays(hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=60)),
        hnp.arrays(np.int64, st.integers(0, 60), elements=st.integers(0, 5)),
    )


def _images_ok_or_qrl_error(call) -> None:
    try:
        data = call()
    except QrlError:
        return
    # what loads, loads as promised
    for split in (data.train, data.test):
        assert split.x.ndim == 4 and split.x.shape[1] in (1, 3) and min(split.x.shape[2:]) >= 8
        assert float(split.x.min()) >= 0 and float(split.x.max()) <= 1
        assert int(split.y.min()) >= 0 and int(split.y.max()) < data.num_classes


@SETTINGS
@given(x_train=arrays(), y_train=labels(), x_test=arrays(), y_test=labels())
def test_npz_files_load_or_give_a_qrl_error(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "own.npz"
        np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
        _images_ok_or_qrl_error(lambda: load_data("npz", root=path))


@SETTINGS
@given(x=arrays(), y=labels())
def test_tensors_load_or_give_a_qrl_error(x: np.ndarray, y: np.ndarray) -> None:
    _images_ok_or_qrl_error(lambda: from_tensors(torch.as_tensor(x), torch.as_tensor(y)))


MODEL = MLP(1, 4, (8, 8), hidden=(8,))


@SETTINGS
@given(
    x=arrays(hnp.array_shapes(min_dims=2, max_dims=5, max_side=10)),
    y=labels(),
    form=st.sampled_from(["pair", "dataset"]),
)
def test_audit_refuses_malformed_data_with_a_qrl_error_and_no_result(
    x: np.ndarray, y: np.ndarray, form: str
) -> None:
    # Shapes of at most 10 pixels a side and random labels are never a valid 4-class 8x8 set
    # for this model unless they happen to be; those draws are not what this test is about.
    try:
        from_tensors(torch.as_tensor(x), torch.as_tensor(y), num_classes=4)
        if x.shape[1:] in ((1, 8, 8), (8, 8, 1)):
            return
    except QrlError:
        pass
    from torch.utils.data import TensorDataset

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "audit"
        xt, yt = torch.as_tensor(x), torch.as_tensor(y)
        if form == "dataset" and len(xt) == len(yt):
            data: object = TensorDataset(xt, yt)
        else:
            data = (xt, yt)
        with pytest.raises(QrlError):
            audit(MODEL, data, evaluations=2, out=out, progress=False)  # type: ignore[arg-type]
        assert not (out / "metrics.json").exists()


BAD_VALUES = st.one_of(
    st.integers(-5, 0),
    st.floats(allow_nan=True).filter(lambda v: not v > 0),
    st.sampled_from(["abc", "nan", "-inf", "[]"]),
)
INT_KEYS = ("teacher.epochs", "student.epochs", "teacher.batch_size", "student.batch_size")


@SETTINGS
@given(
    key=st.sampled_from(
        [
            "teacher.epochs",
            "student.epochs",
            "teacher.batch_size",
            "student.batch_size",
            "teacher.lr",
            "student.lr",
            "student.tau",
            "data.train_limit",
        ]
    ),
    value=BAD_VALUES,
)
def test_bad_distill_values_give_a_qrl_error_and_no_result(key: str, value: object) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cfg = load_config("distill", [*QUICK, f"out={out}"])
        node, leaf = key.split(".")
        cfg[node][leaf] = value
        with pytest.raises(QrlError):
            distill.run(cfg)
        assert not out.exists()


@pytest.mark.parametrize("key", INT_KEYS)
def test_fractions_for_whole_numbers_give_a_qrl_error(key: str, tmp_path: Path) -> None:
    cfg = load_config("distill", [*QUICK, f"out={tmp_path / 'run'}"])
    node, leaf = key.split(".")
    for value in (1.5, "1.5"):
        cfg[node][leaf] = value
        with pytest.raises(QrlError, match=key):
            distill.run(cfg)
    assert not (tmp_path / "run").exists()
