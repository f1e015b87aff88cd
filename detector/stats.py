"""Stroke statistics: the detector's second branch, late-fused with the CNN's pooled features.

Real MNIST strokes were anti-aliased and rescaled before they were quantised, which leaves a sharp plateau
of stroke cores at 252-254 levels over a nearly flat ramp below. Every generator we trained (three DDPMs,
a VAE and a GAN) smears that plateau: per image they write 20-30 pixels at 252-254 (the VAE 2) where real digits
have about 50, and its cores are less flat (BENCHMARKS.md, "Detector v3"). A CNN on [-1, 1] pixels does
not pick up differences of one or two levels at the top of the range, so the branch gives it them as
numbers, per channel:

- the histogram of stroke levels (above STROKE_LEVEL): 8-level bins up to 248, then one bin per level
  from 248 to 255, as fractions of the stroke pixels;
- the flatness of the stroke cores (3x3 mean above CORE_LEVEL): histograms of the 3x3 standard deviation
  and of the Laplacian's magnitude there, and the cores' share of the stroke;
- quantiles of the stroke's levels, and the mean and spread of the cores' levels, which move less under
  JPEG, blur and noise than single levels do;
- the stroke's size and place: its pixel count, mass, bounding box and centroid, and the mean gradient.

The branch reads them twice: from the image, and from its 3x3 median, which undoes part of what noise and
JPEG's ringing do to a stroke's plateau (`branch_statistics`). Like the CNN's input, they are computed
after the background floor, so the background carries no evidence. JPEG, blur and noise move these numbers for reals and fakes alike; training sees them under the
same augmentation as the CNN, so the fusion learns what survives each edit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ddpm_guard.generator.perturb import median_filter

STROKE_LEVEL = 32  # 8-bit levels: a pixel above this is part of the stroke
CORE_LEVEL = 200  # a pixel whose 3x3 mean is above this is in a stroke's core
_EDGES = torch.tensor([float(v) for v in range(STROKE_LEVEL + 8, 248, 8)] + [float(v) for v in range(248, 256)])
_STD_EDGES = torch.tensor([2.0, 5.0, 10.0, 20.0, 40.0])
_LAP_EDGES = torch.tensor([3.0, 8.0, 20.0, 50.0])
_QUANTILES = torch.tensor([0.5, 0.75, 0.9, 0.95, 0.99])
_N_HISTOGRAMS = (len(_EDGES) + 1) + (len(_STD_EDGES) + 1) + (len(_LAP_EDGES) + 1)  # the first of each block
N_STATS = _N_HISTOGRAMS + len(_QUANTILES) + 2 + 8  # per channel


def _histogram(values: torch.Tensor, mask: torch.Tensor, edges: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """(B, N) values counted into len(edges) + 1 bins where mask is set, divided by norm (B,)."""
    idx = torch.bucketize(values, edges.to(values.device), right=True)
    out = torch.zeros(values.shape[0], len(edges) + 1, device=values.device, dtype=values.dtype)
    return out.scatter_add_(1, idx, mask.to(values.dtype)) / norm[:, None]


def stroke_statistics(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) images in [-1, 1] -> (B, C * N_STATS) statistics, each roughly in [0, 1]."""
    b, c, h, w = x.shape
    v = ((x.float() + 1) * 127.5).clamp(0, 255).reshape(b * c, 1, h, w)
    stroke = v > STROKE_LEVEL
    stroke_flat, flat = stroke.reshape(b * c, -1), v.reshape(b * c, -1)
    npix = stroke_flat.sum(1).float()
    norm = npix.clamp(min=1)
    levels = _histogram(flat, stroke_flat, _EDGES, norm)

    mean = F.avg_pool2d(v, 3, 1, 1, count_include_pad=False)
    std = (F.avg_pool2d(v * v, 3, 1, 1, count_include_pad=False) - mean * mean).clamp(min=0).sqrt()
    lap = (4 * v - F.pad(v, (0, 0, 1, 0))[..., :-1, :] - F.pad(v, (0, 0, 0, 1))[..., 1:, :]
           - F.pad(v, (1, 0))[..., :-1] - F.pad(v, (0, 1))[..., 1:]).abs()
    core = (mean > CORE_LEVEL).reshape(b * c, -1)
    ncore = core.sum(1).float()
    core_norm = ncore.clamp(min=1)
    flatness = _histogram(std.reshape(b * c, -1), core, _STD_EDGES, core_norm)
    sharpness = _histogram(lap.reshape(b * c, -1), core, _LAP_EDGES, core_norm)

    rows, cols = stroke.any(3)[:, 0], stroke.any(2)[:, 0]
    ar_h, ar_w = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    height = torch.where(rows, ar_h, -1).amax(1) - torch.where(rows, ar_h, h).amin(1) + 1
    width = torch.where(cols, ar_w, -1).amax(1) - torch.where(cols, ar_w, w).amin(1) + 1
    mass = v.sum((1, 2, 3)).clamp(min=1e-6)
    cy = (v[:, 0].sum(2) * ar_h).sum(1) / mass
    cx = (v[:, 0].sum(1) * ar_w).sum(1) / mass
    grad = ((v[..., 1:, :] - v[..., :-1, :]).abs().mean((1, 2, 3)) + (v[..., 1:] - v[..., :-1]).abs().mean((1, 2, 3)))
    shape = torch.stack([npix / (h * w), mass / (255 * h * w), height.clamp(min=0) / h, width.clamp(min=0) / w,
                         cy / h, cx / w, grad / 255, ncore / norm], 1)
    # where the top of the stroke lies survives JPEG, blur and noise better than single levels do:
    # quantiles of the stroke's levels, and the mean and spread of the cores' levels
    quantiles = torch.nanquantile(torch.where(stroke_flat, flat, float("nan")),
                                  _QUANTILES.to(x.device), dim=1).T.nan_to_num(0.0) / 255
    core_mean = (flat * core).sum(1) / core_norm
    core_sd = ((flat - core_mean[:, None]).square() * core).sum(1).div(core_norm).sqrt()
    out = torch.cat([levels, flatness, sharpness, quantiles, core_mean[:, None] / 255, core_sd[:, None] / 64, shape], 1)
    return out.reshape(b, c * N_STATS)


def branch_statistics(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 2 * C * N_STATS): the statistics of the image, then of its 3x3 median."""
    return torch.cat([stroke_statistics(x), stroke_statistics(median_filter(x, 3))], 1)


def coarse_statistics(stats):
    """(B, 2 * C * N_STATS) branch statistics (tensor or array) -> (B, 2 * C * 15): per block, only the level
    quantiles, the cores' mean and spread, and the stroke's size and place, without the histograms. These say
    whether there is a digit-like stroke at all, and the benign edits move them far less than the histograms
    (what detector.domain reads)."""
    blocks = stats.reshape(len(stats), -1, N_STATS)[:, :, _N_HISTOGRAMS:]
    return blocks.reshape(len(stats), -1)
