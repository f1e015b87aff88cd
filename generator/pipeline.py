"""Short, plain pipelines on top of the samplers: labelled generation and writing samples to disk."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ddpm_guard.generator.errors import GuardError
from ddpm_guard.generator.image_io import make_grid, save_image
from ddpm_guard.generator.samplers import sample
from ddpm_guard.generator.schedule import NoiseSchedule

DEFAULT_GUIDANCE = 1.5  # CFG scale (1 = plain conditional): the smallest swept scale whose class accuracy clears 0.97 with margin (BENCHMARKS.md)


def spread_labels(n: int, num_classes: int) -> torch.Tensor:
    """0, 1, ..., 9, 0, 1, ...: an even spread over the classes."""
    return torch.arange(n) % num_classes


def resolve_labels(model: nn.Module, n: int, label: int | None) -> torch.Tensor | None:
    k = getattr(model.config, "num_classes", None)
    if not k:
        if label is not None:
            raise GuardError("this model is unconditional; drop --label")
        return None
    if label is None:
        return spread_labels(n, k)
    if not 0 <= label < k:
        raise GuardError(f"unknown label {label}; this model knows labels 0 to {k - 1}")
    return torch.full((n,), label, dtype=torch.long)


def generate(model: nn.Module, schedule: NoiseSchedule, n: int, *, label: int | None = None,
             labels: torch.Tensor | None = None, guidance: float = DEFAULT_GUIDANCE, sampler: str = "ddim",
             steps: int | None = None, eta: float = 0.0, variance: str = "beta_tilde", seed: int = 0,
             x_T: torch.Tensor | None = None, batch_size: int = 256, precision: str = "fp32",
             progress: bool = False, x0_hook=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """n images in [-1, 1] (CPU) and their labels. The same seed gives the same images.

    x_T, when given, is the (n, C, H, W) starting noise; otherwise it is drawn from `seed` up front,
    so the images do not depend on the batch size for deterministic samplers.
    """
    if n < 1:
        raise GuardError(f"--n must be at least 1, got {n}")
    if steps is not None and steps < 1:
        raise GuardError(f"--steps must be at least 1, got {steps}")
    cfg = model.config
    distilled = getattr(model, "distilled", None)  # checkpoint.Distilled, set by load_model for a student
    if distilled is not None:
        steps = distilled.steps if steps is None else steps  # a student runs on the grid it learned
        lo, hi = distilled.guidance_range
        if cfg.num_classes and not lo <= guidance <= hi:
            raise GuardError(f"this distilled model learned guidance scales {lo:g} to {hi:g}, got {guidance:g}")
    shape = (n, cfg.in_channels, cfg.image_size, cfg.image_size)
    gen = torch.Generator().manual_seed(seed)
    if x_T is None:
        x_T = torch.randn(shape, generator=gen)
    if labels is None:
        labels = resolve_labels(model, n, label)
    out = []
    for i in range(0, n, batch_size):
        sl = slice(i, i + batch_size)
        out.append(sample(model, schedule, tuple(x_T[sl].shape), x_T=x_T[sl],
                          labels=labels[sl] if labels is not None else None, guidance=guidance,
                          sampler=sampler, steps=steps, eta=eta, variance=variance, generator=gen,
                          precision=precision, progress=progress, x0_hook=x0_hook).cpu())
    return torch.cat(out), labels


def write_samples(images: torch.Tensor, out_dir: str | Path, labels: torch.Tensor | None = None,
                  prefix: str = "sample") -> list[Path]:
    """One PNG per image (label in the name when known) plus grid.png."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GuardError(f"{out}: cannot create the output folder ({e.strerror})") from None
    paths = []
    for i, img in enumerate(images):
        tag = f"_label{int(labels[i])}" if labels is not None else ""
        paths.append(save_image(img, out / f"{prefix}_{i:05d}{tag}.png"))
    save_image(make_grid(images), out / "grid.png")
    return paths
