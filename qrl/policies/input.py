"""Input-distribution policies: an action in [-1, 1]^k chooses a distribution over inputs.

The family is a composition of parametric image transformations plus a class mixture. Every
parameter's zero is the identity, so the all-zero action is the data's own distribution.
Images stay in [0, 1] pixel space, shaped (N, C, H, W). Transformations apply in this fixed
order: class mixture (which images), then brightness, contrast, gamma, saturation,
colour shift (photometric), translation, blur, occlusion, and Gaussian noise last.

| name        | dims | parameter a in [-1, 1]                                               |
|-------------|------|----------------------------------------------------------------------|
| brightness  | 1    | add 0.5 a to every pixel                                              |
| contrast    | 1    | scale deviations from the image mean by 4^a                           |
| gamma       | 1    | x ** (3^a)                                                            |
| saturation  | 1    | RGB only: scale deviations from the grey level by 4^a                 |
| color_shift | 3    | RGB only: add 0.3 a_c to channel c                                    |
| translate   | 2    | shift by (a_x, a_y) * 25% of the image side (bilinear, zero fill)     |
| blur        | 1    | a > 0: Gaussian blur, sigma 1.5 a px; a < 0: unsharp mask, amount -a   |
| occlusion   | 3    | a zero-filled square of side 50% |a_0| of the image, centred at (a_1, a_2) |
| noise       | 1    | add N(0, (0.3 a)^2) per pixel                                          |
| class mix   | K    | sample class k with probability proportional to p_k exp(3 a_k)        |
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from qrl.data import Split
from qrl.errors import ActionError, ConfigError

CLASS_TEMPERATURE = 3.0
RGB_ONLY = ("saturation", "color_shift")


@dataclass(frozen=True)
class Corruption:
    """One parametric transformation: its action dims, how to apply it and how to say it."""

    name: str
    dims: int
    apply: Callable[[Tensor, np.ndarray, torch.Generator], Tensor]
    describe: Callable[[np.ndarray], str]


def _brightness(x: Tensor, a: np.ndarray, g: torch.Generator) -> Tensor:
    return x + 0.5 * float(a[0])


def _contrast(x: Tensor, a: np.ndarray, g: torch.Generator) -> Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    return mean + (x - mean) * 4.0 ** float(a[0])


def _gamma(x: Tensor, a: np.ndarray, g: torch.Generator) -> Tensor:
    return x.clamp(0, 1) ** (3.0 ** float(a[0]))


def _saturation(x: Tensor, a: np.ndarray, g: torch.Generator) -> Tensor:
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    grey = (x * weights).sum(dim=1, keepdim=True)  # (B, 1, H, W)
    return grey + (x - grey) * 4.0 ** float(a[0])


def _color_shift(x: Tensor, a: np.ndarray, g: torch.Generator) -> Tensor:
    return x + 0.3 * torch.as_tensor(a, dtype=x.dtype).view(1, 3, 1, 1)


def _translate(x: Tensor, a: np.ndarray, g: torch.Generator) -> Tensor:
    # affine_grid works in [-1, 1] coordinates: a shift of 25% of the side is 0.5 there.
    theta = torch.tensor([[1.0, 0.0, -0.5 * float(a[0])], [0.0, 1.0, -0.5 * float(a[1])]])
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _gaussian_kernel(sigma: float) -> Tensor:
    radius = max(1, math.ceil(2.5 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur per channel, reflecting at the borders."""
    if sigma < 1e-3:  # narrower than float32 can express: the identity
        return x
    k = _gaussian_kernel(sigma)
    c, r = x.shape[1], (len(k) - 1) // 2
    h = min(r, x.shape[2] - 1)
    w = min(r, x.shape[3] - 1)
    k_h = k[r - h : r + h + 1].view(1, 1, -1, 1).repeat(c, 1, 1, 1)
    k_w = k[r - w : r + w + 1].view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    x = F.conv2d(
        F.pad(x, (0, 0, h, h), mode="reflect"), k_h / k_h.sum(dim=2, keepdim=True), groups=c
    )
    return F.conv2d(
        F.pad(x, (w, w, 0, 0), mode="reflect"), k_w / k_w.sum(dim=3, keepdim=True), groups=c
    )


def _blur(x: Tensor, a: np.ndarray, g: torch.Generator) -> Tensor:
    s = float(a[0])
    if s > 0:
        return gaussian_blur(x, 1.5 * s)
    return x + (-s) * (x - gaussian_blur(x, 1.0))  # unsharp mask: sharpen


def _occlusion(x: Tensor, a: np.ndarray, g: torch.Generator) -> Tensor:
    _, _, h, w = x.shape
    side_h, side_w = round(0.5 * abs(float(a[0])) * h), round(0.5 * abs(float(a[0])) * w)
    if side_h == 0 or side_w == 0:
        return x
    cy, cx = (float(a[2]) + 1) / 2 * (h - 1), (float(a[1]) + 1) / 2 * (w - 1)
    top, left = round(cy - side_h / 2), round(cx - side_w / 2)
    top, left = min(max(top, 0), h - side_h), min(max(left, 0), w - side_w)
    x = x.clone()
    x[:, :, top : top + side_h, left : left + side_w] = 0.0
    return x


def _noise(x: Tensor, a: np.ndarray, g: torch.Generator) -> Tensor:
    sigma = 0.3 * abs(float(a[0]))
    return x + sigma * torch.randn(x.shape, generator=g)


def _signed(label: str, scale: float = 1.0, fmt: str = "+.2f") -> Callable[[np.ndarray], str]:
    return lambda a: f"{label} {scale * float(a[0]):{fmt}}"


CORRUPTIONS: dict[str, Corruption] = {
    c.name: c
    for c in (
        Corruption("brightness", 1, _brightness, _signed("brightness", 0.5)),
        Corruption("contrast", 1, _contrast, lambda a: f"contrast x{4.0 ** float(a[0]):.2f}"),
        Corruption("gamma", 1, _gamma, lambda a: f"gamma {3.0 ** float(a[0]):.2f}"),
        Corruption("saturation", 1, _saturation, lambda a: f"saturation x{4.0 ** float(a[0]):.2f}"),
        Corruption(
            "color_shift",
            3,
            _color_shift,
            lambda a: "colour shift (" + ", ".join(f"{0.3 * float(v):+.2f}" for v in a) + ")",
        ),
        Corruption(
            "translate",
            2,
            _translate,
            lambda a: f"translate ({25 * float(a[0]):+.0f}%, {25 * float(a[1]):+.0f}%)",
        ),
        Corruption(
            "blur",
            1,
            _blur,
            lambda a: (
                f"blur sigma {1.5 * float(a[0]):.2f}px"
                if a[0] >= 0
                else f"sharpen {-float(a[0]):.2f}"
            ),
        ),
        Corruption(
            "occlusion",
            3,
            _occlusion,
            lambda a: (
                f"occlusion {50 * abs(float(a[0])):.0f}% "
                f"at ({float(a[1]):+.2f}, {float(a[2]):+.2f})"
            ),
        ),
        Corruption("noise", 1, _noise, lambda a: f"noise sigma {0.3 * abs(float(a[0])):.3f}"),
    )
}
DEFAULT_CORRUPTIONS = ("brightness", "contrast", "gamma", "noise", "blur", "translate", "occlusion")
ORDER = tuple(CORRUPTIONS)  # the fixed order of application


def class_prior(pool: Split, num_classes: int) -> Tensor:
    """Class frequencies of a split, shaped (num_classes,)."""
    counts = torch.bincount(pool.y, minlength=num_classes).float()
    return counts / counts.sum()


class InputDistribution:
    """A parametric family of input distributions, indexed by an action in [-1, 1]^dim.

    Args:
        num_classes: classes of the data (for the class mixture).
        channels: 1 or 3; RGB-only transformations are dropped for 1-channel data.
        corruptions: names from `CORRUPTIONS`, in any order (they apply in the fixed order).
        class_mix: append K action dims choosing the class mixture.

    Raises:
        ConfigError: an unknown corruption name, or RGB-only ones asked for on grey data.
    """

    def __init__(
        self,
        num_classes: int,
        channels: int,
        corruptions: Sequence[str] = DEFAULT_CORRUPTIONS,
        class_mix: bool = True,
    ) -> None:
        unknown = sorted(set(corruptions) - set(CORRUPTIONS))
        if unknown:
            raise ConfigError(f"unknown corruptions {unknown}; choose from {list(CORRUPTIONS)}")
        if channels == 1 and set(corruptions) & set(RGB_ONLY):
            raise ConfigError(
                f"{sorted(set(corruptions) & set(RGB_ONLY))} need 3-channel images; "
                f"this data has 1 channel"
            )
        if not corruptions and not class_mix:
            raise ConfigError("an input distribution needs at least one corruption or class_mix")
        self.num_classes, self.channels, self.class_mix = num_classes, channels, class_mix
        self.corruptions = [CORRUPTIONS[n] for n in ORDER if n in corruptions]
        self.slices: list[tuple[Corruption, slice]] = []
        start = 0
        for c in self.corruptions:
            self.slices.append((c, slice(start, start + c.dims)))
            start += c.dims
        self.class_slice = slice(start, start + (num_classes if class_mix else 0))
        self.dim = self.class_slice.stop

    def action_names(self) -> list[str]:
        """One name per action dimension, e.g. `translate[1]`, `class[3]`."""
        names = []
        for c, _ in self.slices:
            names += [c.name] if c.dims == 1 else [f"{c.name}[{i}]" for i in range(c.dims)]
        return names + [
            f"class[{k}]" for k in range(self.class_slice.stop - self.class_slice.start)
        ]

    def class_weights(self, action: np.ndarray, prior: Tensor) -> Tensor:
        """Sampling probability of each class: prior_k * exp(3 a_k), normalized."""
        if not self.class_mix:
            return prior
        logits = torch.as_tensor(action[self.class_slice], dtype=torch.float32) * CLASS_TEMPERATURE
        w = prior * torch.exp(logits - logits.max())
        return w / w.sum()

    def transform(self, x: Tensor, action: np.ndarray, generator: torch.Generator) -> Tensor:
        """Apply the transformations chosen by `action` to a batch; output clamped to [0, 1]."""
        action = self._check(action)
        for c, sl in self.slices:
            params = action[sl]
            if np.any(params != 0.0):  # zero is the identity: skip it exactly
                x = c.apply(x, params, generator)
        return x.clamp(0.0, 1.0)

    def sample(
        self, pool: Split, n: int, action: np.ndarray, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Draw `n` transformed inputs and their labels from `pool` under `action`.

        Examples are drawn i.i.d. (with replacement), so a batch follows the class mixture
        exactly in expectation even when one class dominates it.
        """
        idx = self.choose(pool, n, action, generator)
        return self.transform(pool.rows(idx), action, generator), pool.y[idx]

    def choose(self, pool: Split, n: int, action: np.ndarray, generator: torch.Generator) -> Tensor:
        """Indices into `pool` of `n` i.i.d. draws under the action's class mixture."""
        action = self._check(action)
        prior = class_prior(pool, self.num_classes)
        w_class = self.class_weights(action, prior)
        per_example = (w_class / prior.clamp_min(1e-12))[pool.y]
        return torch.multinomial(per_example, n, replacement=True, generator=generator)

    def describe(self, action: np.ndarray, tol: float = 0.02, prior: Tensor | None = None) -> str:
        """The distribution in words, e.g. "brightness +0.30, noise sigma 0.080".

        Class shares are computed against `prior` (the pool's class frequencies; uniform when
        None), as `sample` draws them.
        """
        action = self._check(action)
        parts = [
            c.describe(action[sl]) for c, sl in self.slices if np.any(np.abs(action[sl]) > tol)
        ]
        if self.class_mix:
            if prior is None:
                prior = torch.full((self.num_classes,), 1.0 / self.num_classes)
            w = self.class_weights(action, prior)
            top = torch.argsort(w, descending=True)[:3]
            if float(w.max() - w.min()) > tol:
                parts.append("classes " + ", ".join(f"{int(k)}: {float(w[k]):.0%}" for k in top))
        return ", ".join(parts) if parts else "identity (the data's own distribution)"

    def _check(self, action: np.ndarray) -> np.ndarray:
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape[0] != self.dim:
            raise ActionError(
                f"input-distribution action needs {self.dim} values, got {a.shape[0]}"
            )
        return a
