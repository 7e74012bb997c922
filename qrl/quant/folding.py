"""BatchNorm folding, as the ONNX exporter does it before a model is quantized.

A deployed int8 model never sees a BatchNorm after a convolution: exporting in eval mode folds
`gamma * (conv(x) - mean) / sqrt(var + eps) + beta` into the conv's weight and bias. The weights
that get quantized are therefore the folded ones, and a BatchNorm that scales some channels far
above the others (a range disparity between channels) stretches a per-tensor weight grid until the
other channels' weights round to zero. A simulator that quantizes the unfolded weights misses it.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from qrl.errors import ConfigError


def conv_batchnorm_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, batchnorm) module names where the BatchNorm's only input is the conv's output.

    Raises:
        ConfigError: the model cannot be traced by `torch.fx` (data-dependent control flow).
    """
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as error:  # fx raises many types; all mean the same to the user
        raise ConfigError(
            f"fold_batchnorm needs a model that torch.fx can trace; {type(model).__name__} "
            f"cannot be ({type(error).__name__}: {error}). Use a preset with fold_batchnorm=false"
        ) from error
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        source = node.args[0]
        if (
            isinstance(source, fx.Node)
            and source.op == "call_module"
            and isinstance(modules[source.target], nn.Conv2d)
            and len(source.users) == 1  # the conv's raw output is used nowhere else
        ):
            pairs.append((str(source.target), str(node.target)))
    return pairs


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` with every Conv2d -> BatchNorm2d pair folded into one Conv2d.

    The folded conv computes what the pair computes in eval mode (running statistics); the
    BatchNorm becomes an `nn.Identity`, so module names and the order of the Conv2d and Linear
    layers are unchanged. The argument is not modified.
    """
    pairs = conv_batchnorm_pairs(model)
    folded = copy.deepcopy(model)
    for conv_name, bn_name in pairs:
        conv, bn = folded.get_submodule(conv_name), folded.get_submodule(bn_name)
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
        if bn.running_mean is None or bn.running_var is None:
            raise ConfigError(f"{bn_name} keeps no running statistics: it cannot be folded")
        weight, bias = fuse_conv_bn_weights(
            conv.weight,
            conv.bias,
            bn.running_mean,
            bn.running_var,
            bn.eps,
            bn.weight,
            bn.bias,
        )
        fused = copy.deepcopy(conv)
        fused.weight, fused.bias = weight, bias
        _set_submodule(folded, conv_name, fused)
        _set_submodule(folded, bn_name, nn.Identity())
    return folded


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)
