"""quantized_copy, set_bits_ and its scopes, and per-input bit-widths on every architecture."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qrl.errors import ConfigError
from qrl.models import MLP, ResNet18, SmallCNN
from qrl.quant import (
    QuantConfig,
    QuantizedLayer,
    float_model,
    float_path,
    layer_names,
    quantized_copy,
    quantized_layers,
    set_bits_,
    set_quantization_enabled_,
    using_bits,
)

ARCHS = {
    "cnn": lambda: SmallCNN(1, 10, (8, 8), width=8),
    "mlp": lambda: MLP(1, 10, (8, 8), hidden=(32, 16)),
    "resnet18": lambda: ResNet18(3, 10, (16, 16), width=4),
}


def _inputs(model: nn.Module, n: int, seed: int = 0) -> torch.Tensor:
    shape = (3, 16, 16) if isinstance(model, ResNet18) else (1, 8, 8)
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ARCHS)
def test_quantized_copy_never_modifies_its_argument(arch: str) -> None:
    torch.manual_seed(0)
    model = ARCHS[arch]().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quantized = quantized_copy(model, QuantConfig(act_bits=3))
    quantized(_inputs(model, 4))
    assert not any(isinstance(m, QuantizedLayer) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    expected = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert layer_names(quantized) == expected


@pytest.mark.parametrize("arch", ARCHS)
def test_per_input_bits_match_each_row_run_alone(arch: str) -> None:
    torch.manual_seed(0)
    model = ARCHS[arch]().eval()
    quantized = quantized_copy(model, QuantConfig(act_bits=8)).eval()
    x = _inputs(model, 12)
    bits = torch.randint(
        2, 9, (12, len(layer_names(quantized))), generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        batched = set_bits_(quantized, bits)(x)
        for i in range(len(x)):
            alone = set_bits_(quantized, bits[i].tolist())(x[i : i + 1])
            # Float tolerance only: per-sample qparams make each row independent of the batch.
            assert torch.allclose(batched[i], alone[0], rtol=1e-4, atol=1e-4), i


def test_per_input_bits_change_only_their_own_row() -> None:
    torch.manual_seed(0)
    model = ARCHS["cnn"]().eval()
    quantized = quantized_copy(model).eval()
    x = _inputs(model, 6)
    n = len(layer_names(quantized))
    high = torch.full((6, n), 8)
    low_row = high.clone()
    low_row[2] = 2
    with torch.no_grad():
        a, b = set_bits_(quantized, high)(x), set_bits_(quantized, low_row)(x)
    changed = (a - b).abs().amax(dim=1) > 1e-6
    assert changed.tolist() == [False, False, True, False, False, False]


def test_more_bits_track_the_float_model_more_closely() -> None:
    torch.manual_seed(0)
    model = ARCHS["cnn"]().eval()
    x = _inputs(model, 64)
    with torch.no_grad():
        ref = model(x)
        err = {
            b: float((set_bits_(quantized_copy(model), b).eval()(x) - ref).abs().mean())
            for b in (2, 4, 8)
        }
    assert err[8] < err[4] < err[2]


def test_set_bits_accepts_every_documented_form_and_rejects_the_rest() -> None:
    quantized = quantized_copy(ARCHS["cnn"]())
    n = len(layer_names(quantized))
    set_bits_(quantized, 4)
    assert all(layer.bits == 4 for layer in quantized_layers(quantized))
    set_bits_(quantized, list(range(3, 3 + n)))
    assert [layer.bits for layer in quantized_layers(quantized)] == list(range(3, 3 + n))
    set_bits_(quantized, torch.full((n,), 5))
    assert all(layer.bits == 5 for layer in quantized_layers(quantized))
    with pytest.raises(ConfigError, match="from 2 to 8"):
        set_bits_(quantized, 9)
    with pytest.raises(ConfigError, match="from 2 to 8"):
        set_bits_(quantized, [4] * (n - 1) + [1])
    with pytest.raises(ConfigError, match=f"for {n} quantized layers"):
        set_bits_(quantized, [4, 4])
    with pytest.raises(ConfigError, match="integer dtype"):
        set_bits_(quantized, torch.full((2, n), 4.0))
    with pytest.raises(ConfigError, match=r"must lie in 2\.\.8"):
        set_bits_(quantized, torch.full((2, n), 9))
    with pytest.raises(ConfigError, match=rf"shaped \(batch, {n}\)"):
        set_bits_(quantized, torch.full((2, n + 1), 4))
    with pytest.raises(ConfigError, match="from 2 to 8"):
        set_bits_(quantized, [4.5] * n)  # type: ignore[list-item]
    set_bits_(quantized, torch.full((3, n), 4))
    with pytest.raises(ValueError, match="batch has 5 inputs"):
        quantized(torch.rand(5, 1, 8, 8))


def test_qat_trains_the_float_weights_through_the_straight_through_estimator() -> None:
    torch.manual_seed(0)
    x = torch.rand(128, 1, 8, 8)
    y = (x.mean(dim=(1, 2, 3)) > 0.5).long()
    quantized = set_bits_(quantized_copy(MLP(1, 2, (8, 8), hidden=(16,))), 2).train()
    opt = torch.optim.Adam(quantized.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = F.cross_entropy(quantized(x), y)
        opt.zero_grad()
        loss.backward()
        losses.append(loss.item())
        opt.step()
    grads = [layer.layer.weight.grad for layer in quantized_layers(quantized)]
    assert all(g is not None and float(g.abs().sum()) > 0 for g in grads)
    assert losses[-1] < 0.5 * losses[0]
    trained = float_model(quantized)
    assert not any(isinstance(m, QuantizedLayer) for m in trained.modules())
    first = next(m for m in trained.modules() if isinstance(m, nn.Linear))
    assert torch.equal(first.weight, quantized_layers(quantized)[0].layer.weight)


def test_eval_weight_cache_follows_weight_updates() -> None:
    torch.manual_seed(0)
    model = MLP(1, 3, (8, 8), hidden=(8,))
    quantized = quantized_copy(model).eval()
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        before = quantized(x)
        quantized_layers(quantized)[0].layer.weight.mul_(2.0)
        after = quantized(x)
    assert not torch.allclose(before, after)


def test_quantization_can_be_switched_off() -> None:
    torch.manual_seed(0)
    model = ARCHS["cnn"]().eval()
    quantized = set_bits_(quantized_copy(model), 2).eval()
    x = _inputs(model, 8)
    with torch.no_grad():
        assert not torch.allclose(quantized(x), model(x))
        assert torch.allclose(set_quantization_enabled_(quantized, False)(x), model(x), atol=1e-6)


@pytest.mark.parametrize("before", ["int", "per_input"])
def test_using_bits_restores_the_previous_bits_also_when_the_block_raises(before: str) -> None:
    torch.manual_seed(0)
    model = ARCHS["cnn"]().eval()
    quantized = quantized_copy(model).eval()
    n = len(layer_names(quantized))
    x = _inputs(model, 3)
    previous = 5 if before == "int" else torch.tensor([[3] * n, [6] * n, [8] * n])
    set_bits_(quantized, previous)
    saved = [layer.bits for layer in quantized_layers(quantized)]
    with torch.no_grad():
        expected = quantized(x)
        with using_bits(quantized, 2):
            assert all(layer.bits == 2 for layer in quantized_layers(quantized))
            assert not torch.allclose(quantized(x), expected)
        with pytest.raises(RuntimeError, match="inside the scope"), using_bits(quantized, [8] * n):
            raise RuntimeError("inside the scope")
        with pytest.raises(ConfigError), using_bits(quantized, 9):  # refused before any change
            pass
        assert torch.equal(quantized(x), expected)
    for layer, bits in zip(quantized_layers(quantized), saved, strict=True):
        assert layer.bits is bits  # the very objects: an int, or the per-input (batch,) tensor


def test_float_path_restores_enabled_also_when_the_block_raises() -> None:
    torch.manual_seed(0)
    model = ARCHS["cnn"]().eval()
    quantized = set_bits_(quantized_copy(model), 2).eval()
    layers = quantized_layers(quantized)
    layers[0].enabled = False  # a mixed state comes back exactly as it was
    x = _inputs(model, 4)
    with torch.no_grad():
        with float_path(quantized):
            assert not any(layer.enabled for layer in layers)
            assert torch.allclose(quantized(x), model(x), atol=1e-6)
        assert [layer.enabled for layer in layers] == [False] + [True] * (len(layers) - 1)
        with pytest.raises(RuntimeError, match="inside"), float_path(quantized):
            raise RuntimeError("inside")
        assert [layer.enabled for layer in layers] == [False] + [True] * (len(layers) - 1)
        assert not torch.allclose(quantized(x), model(x))


def test_quantized_copy_refuses_models_without_layers_and_real_backends() -> None:
    with pytest.raises(ConfigError, match="no Conv2d or Linear"):
        quantized_copy(nn.Sequential(nn.ReLU()))
    with pytest.raises(ConfigError, match="real_backend"):
        quantized_copy(MLP(), QuantConfig(backend="onnxruntime"))


def test_bad_bits_leave_the_model_unchanged_and_reduce_range_needs_three_bits() -> None:
    quantized = quantized_copy(ARCHS["mlp"](), QuantConfig(act_bits=8, act_reduce_range=True))
    n = len(layer_names(quantized))
    set_bits_(quantized, 5)
    with pytest.raises(ConfigError, match="at least 3"):
        set_bits_(quantized, [3] * (n - 1) + [2])
    with pytest.raises(ConfigError, match="from 2 to 8"):
        set_bits_(quantized, [4] * (n - 1) + [9])
    assert [layer.bits for layer in quantized_layers(quantized)] == [5] * n
    set_bits_(quantized, 3)


def test_weight_cache_follows_a_dtype_change() -> None:
    quantized = quantized_copy(MLP(1, 3, (8, 8), hidden=(8,))).eval()
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        quantized(x)
        out = quantized.double()(x.double())
    assert out.dtype == torch.float64
