"""The watermark's one attack module:
- ATTACKS, the robustness suite every evaluation reports: Tree-Ring's six attacks (Wen et al. 2023) scaled to small
  images, plus resize x0.5 and a 3x3 median filter;
- HELD_OUT_ATTACKS, edits no decoder ever trained on (the honest 'unseen edit' rows);
- attack_layer, the differentiable random attacks a decoder and a reader train through (ATTACK_NAMES).
The image operations live in generator.perturb (the detector uses them too).

Every attack takes a batch (B, C, H, W) in [-1, 1] and a torch.Generator and returns a batch in
[-1, 1] of the same shape.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F


from ddpm_guard.generator.perturb import (gaussian_blur, gaussian_noise, jpeg, median_filter, random_brightness,
                               random_resized_crop, resize_and_back, rotate)

Attack = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

ATTACKS: dict[str, Attack] = {
    "clean": lambda x, g: x,
    "rotate15": lambda x, g: rotate(x, 15),
    "rotate45": lambda x, g: rotate(x, 45),
    "rotate75": lambda x, g: rotate(x, 75),
    "jpeg25": lambda x, g: jpeg(x, 25),
    "crop0.75": random_resized_crop,
    "blur1": lambda x, g: gaussian_blur(x, 1.0),
    "noise0.1": gaussian_noise,
    "brightness0-6": random_brightness,
    "resize0.5": lambda x, g: resize_and_back(x, 0.5),
    "median3": lambda x, g: median_filter(x, 3),
}
# Tree-Ring's six attacks (rotation at 75 degrees, its setting), for the headline average
TREE_RING_SIX = ("rotate75", "jpeg25", "crop0.75", "blur1", "noise0.1", "brightness0-6")
HELD_OUT_ATTACKS = ("gamma0.5", "jpeg+crop")  # never in the decoder's training: an honest 'unseen edit' check


def held_out_attack(name: str, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    if name == "gamma0.5":  # a tone curve: x -> x^0.5 on [0, 1] (lifts the dark strokes' edges)
        return ((x + 1) / 2).clamp(0, 1).pow(0.5) * 2 - 1
    if name == "jpeg+crop":  # two edits in a row, as uploads see them
        return jpeg(random_resized_crop(x, g), 50)
    raise KeyError(name)


# ---- the attack layer: real operations forward, straight-through where they have no useful gradient ----

def _st(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """y in the forward pass, the identity's gradient in the backward pass."""
    return x + (y - x).detach()


def _in01(fn, x01: torch.Tensor, *args) -> torch.Tensor:
    """A generator.perturb operation (on [-1, 1]) applied to [0, 1] pixels."""
    return (fn(x01 * 2 - 1, *args) + 1) / 2


def _blur01(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    r = torch.arange(-4, 5, dtype=x.dtype)
    k1 = torch.exp(-r[None] ** 2 / (2 * sigma[:, None] ** 2))
    k1 = k1 / k1.sum(1, keepdim=True)
    k = (k1[:, :, None] * k1[:, None, :])[:, None]  # (B, 1, 9, 9)
    y = F.conv2d(F.pad(x.transpose(0, 1), (4, 4, 4, 4), mode="replicate"), k, groups=len(x))
    return y.transpose(0, 1)


def _affine01(x: torch.Tensor, gen: torch.Generator, max_angle: float, min_area: float,
              max_aspect: float = 1.0) -> torch.Tensor:
    """Rotation by U(-max_angle, max_angle) and a random crop of U(min_area, 1) of the area at a random
    place, with its width:height log-uniform in [1/max_aspect, max_aspect] (torchvision's
    RandomResizedCrop: 4/3), resized back (one bilinear resampling; uncovered corners black)."""
    b = len(x)
    a = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(max_angle)
    s = (min_area + (1 - min_area) * torch.rand(b, generator=gen)).sqrt()
    sx = sy = s
    if max_aspect != 1.0:  # no draw otherwise, so isotropic runs keep their random stream
        r = torch.exp((torch.rand(b, generator=gen) * 2 - 1) * math.log(max_aspect)).sqrt()
        sx, sy = (s * r).clamp(max=1.0), (s / r).clamp(max=1.0)
    u = torch.rand(2, b, generator=gen) * 2 - 1
    tx, ty = u[0] * (1 - sx), u[1] * (1 - sy)
    theta = torch.stack([torch.stack([sx * a.cos(), -sy * a.sin(), tx], 1),
                         torch.stack([sx * a.sin(), sy * a.cos(), ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


ATTACK_NAMES = ("identity", "rotate", "crop", "rotate+crop", "blur", "noise", "brightness", "resize", "median",
                "jpeg")


def attack_layer(x: torch.Tensor, gen: torch.Generator, identity_share: float = 0.15,
                 max_aspect: float = 1.0) -> torch.Tensor:
    """One random attack per image of a (B, 1, H, W) batch in [-1, 1], applied to its 8-bit version,
    as the robustness suite does (watermark.attacks) but with random strengths over wider ranges:
    rotation up to +-90 degrees, crops of 0.6-1 of the area, blur sigma 0.3-1.5, noise 0-0.15,
    brightness x U[0, 6] with clamping, resize 0.4-0.8 and back, median 3, JPEG 20-90. The crops' aspect
    ratio varies up to `max_aspect` (1: square crops, as the bundled decoder was trained)."""
    b = len(x)
    x = (x + 1) / 2
    x = _st(x, (x * 255).round() / 255)
    kind = torch.randint(1, len(ATTACK_NAMES), (b,), generator=gen)
    kind[torch.rand(b, generator=gen) < identity_share] = 0
    out = x.clone()
    for k, name in enumerate(ATTACK_NAMES):
        idx = (kind == k).nonzero().flatten()
        if len(idx) == 0 or name == "identity":
            continue
        xi, n = x[idx], len(idx)
        if name == "rotate":
            y = _affine01(xi, gen, 90.0, 1.0)
        elif name == "crop":
            y = _affine01(xi, gen, 0.0, 0.6, max_aspect)
        elif name == "rotate+crop":
            y = _affine01(xi, gen, 90.0, 0.6, max_aspect)
        elif name == "blur":
            y = _blur01(xi, 0.3 + 1.2 * torch.rand(n, generator=gen))
        elif name == "noise":
            y = xi + 0.15 * torch.rand(n, 1, 1, 1, generator=gen) * torch.randn(xi.shape, generator=gen)
            y = _st(y, y.clamp(0, 1))
        elif name == "brightness":
            y = xi * (6 * torch.rand(n, 1, 1, 1, generator=gen))
            y = _st(y, y.clamp(0, 1))
        elif name == "resize":
            y = _in01(resize_and_back, xi, float(0.4 + 0.4 * torch.rand(1, generator=gen)))
        elif name == "median":
            y = _st(xi, _in01(median_filter, xi.detach(), 3))
        else:  # jpeg
            y = _st(xi, _in01(jpeg, xi.detach(), torch.randint(20, 91, (n,), generator=gen).tolist()))
        out = out.index_copy(0, idx, y)
    out = _st(out, (out.clamp(0, 1) * 255).round() / 255)  # saved again as an 8-bit file
    return out * 2 - 1
