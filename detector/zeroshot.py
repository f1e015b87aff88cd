"""Zero-shot second opinion: DIRE-style reconstruction error (Wang et al., ICCV 2023).

DDIM-invert the image with the bundled generator, regenerate it from the recovered x_T, and measure
how far the reconstruction lands from the input. Images the generator made lie near its sampling
trajectories and come back closer than real ones. The score is log mean |x - recon| (lower = more
generator-like); the sign and scale are learnt by the fusion, not assumed here.
"""

from __future__ import annotations

import numpy as np
import torch

from ddpm_guard.generator.image_io import fit_to
from ddpm_guard.generator.samplers import ddim_invert, sample

DIRE_STEPS = 10  # inversion steps and as many sampling steps: 2 x 10 generator passes per image


@torch.inference_mode()
def dire_scores(model, schedule, images: torch.Tensor, steps: int = DIRE_STEPS, batch_size: int = 256,
                precision: str = "fp32") -> np.ndarray:
    """(B,) log mean absolute reconstruction error of images in [-1, 1], unconditional (null class)."""
    cfg = model.config
    x = fit_to(images, (cfg.in_channels, cfg.image_size, cfg.image_size))
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        x_T = ddim_invert(model, schedule, xb, steps, precision=precision)
        recon = sample(model, schedule, tuple(xb.shape), x_T=x_T, steps=steps, precision=precision).cpu()
        out.append(torch.log((recon - xb).abs().mean((1, 2, 3)) + 1e-4))
    return torch.cat(out).numpy().astype(np.float64)
