"""Training-free restoration with an unconditional diffusion prior: DDNM (Wang, Yu, Zhang, ICLR 2023).

A linear degradation y = A x has a generalized inverse A+ with A A+ A = A. Any x splits into a
range part A+ A x, fixed by the measurement, and a null-space part (I - A+ A) x, which the
measurement says nothing about. DDNM lets the diffusion model fill the null space only: at every
reverse step the model's clean estimate x0|t is replaced by

    x0_hat = x0|t - A+ (A x0|t - y)            (range-null decomposition, DDNM Eq. 11)

and the step continues from x0_hat as in DDIM. The result satisfies A x = y exactly (up to the
final clamp to the data range, which `finish` repairs by alternating projections). One framework
covers super-resolution (A = box downsampling), deblurring (A = a Gaussian blur, inverted in
Fourier space with small singular values truncated), inpainting (A = keep the known pixels) and
colorization (A = the luma of an RGB image).

Time travel (RePaint, Lugmayr et al. 2022; DDNM Sec. 3.3): after some steps, jump back `jump`
grid steps by re-noising with the forward process and redo them, `repeats` times. It gives the
model more passes to make the filled region agree with the known one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ddpm_guard.generator.errors import GuardError
from ddpm_guard.generator.samplers import autocast_for, guided_eps, randn, timesteps_for
from ddpm_guard.generator.schedule import NoiseSchedule

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, what PIL's convert("L") computes
SCALES = (2, 4)  # super-resolution factors offered to users
BLUR_CUTOFF = 0.1  # Fourier gains below this are treated as lost (truncated SVD): 1/0.1 caps noise gain at 10x


@dataclass(frozen=True)
class Operator:
    """A linear degradation: `forward` maps an image batch (B, C, H, W) to measurements, `pinv` maps
    measurements back to image space with forward(pinv(y)) = y for every y in forward's range."""
    name: str
    forward: Callable[[torch.Tensor], torch.Tensor]
    pinv: Callable[[torch.Tensor], torch.Tensor]

    def project(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x - A+ (A x - y): the closest-in-A+ image that agrees with the measurement."""
        return x - self.pinv(self.forward(x) - y)


def downsample(scale: int) -> Operator:
    """A = average over scale x scale blocks; A+ = copy each value back to its block (A A+ = I)."""
    if scale not in SCALES:
        raise GuardError(f"--scale {scale} is not supported; use {' or '.join(map(str, SCALES))}")
    return Operator(f"sr{scale}", lambda x: F.avg_pool2d(x, scale),
                    lambda y: y.repeat_interleave(scale, -2).repeat_interleave(scale, -1))


def gaussian_gain(sigma: float, h: int, w: int) -> torch.Tensor:
    """The (h, w//2+1) real Fourier gain of a circular Gaussian blur with std `sigma` pixels."""
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(w, dtype=torch.float64)[None]
    return torch.exp(-2 * math.pi ** 2 * sigma ** 2 * (fx ** 2 + fy ** 2))


def blur(sigma: float, size: tuple[int, int], cutoff: float = BLUR_CUTOFF) -> Operator:
    """A = circular Gaussian blur (diagonal in Fourier space); A+ divides by the gain where it is at
    least `cutoff` and zeroes the rest (the truncated-SVD pseudo-inverse DDNM uses for deblurring)."""
    if not 0 < sigma <= 8:
        raise GuardError(f"--deblur sigma must be in (0, 8] pixels, got {sigma}")
    gain = gaussian_gain(sigma, *size)
    keep = gain >= cutoff
    inv = torch.where(keep, 1 / gain, torch.zeros_like(gain))

    def fwd(x: torch.Tensor) -> torch.Tensor:
        return torch.fft.irfft2(torch.fft.rfft2(x.double()) * (gain * keep), s=x.shape[-2:]).to(x.dtype)

    def pinv(y: torch.Tensor) -> torch.Tensor:
        return torch.fft.irfft2(torch.fft.rfft2(y.double()) * inv, s=y.shape[-2:]).to(y.dtype)

    return Operator(f"deblur{sigma:g}", fwd, pinv)


def blur_image(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """The full circular Gaussian blur (no truncation): how a test or a bench degrades an image."""
    gain = gaussian_gain(sigma, *x.shape[-2:])
    return torch.fft.irfft2(torch.fft.rfft2(x.double()) * gain, s=x.shape[-2:]).to(x.dtype)


def inpaint(known: torch.Tensor) -> Operator:
    """A = A+ = multiply by the known-pixel mask (1 = known, 0 = to fill), shape broadcastable to x."""
    m = known.float()
    return Operator("inpaint", lambda x: x * m, lambda y: y * m)


def gray() -> Operator:
    """A = luma (BT.601) of RGB; A+ y = y on every channel. A A+ = I because the luma weights sum to 1,
    so the projection shifts R, G and B by the same amount and leaves the chroma alone."""
    w = torch.tensor(LUMA).view(1, 3, 1, 1)
    return Operator("gray", lambda x: (x * w.to(x)).sum(1, keepdim=True), lambda y: y.expand(-1, 3, -1, -1))


def travel_schedule(grid: list[int], jump: int = 0, repeats: int = 1) -> list[tuple[int, int]]:
    """The (t, t_next) moves of a reverse run over `grid` with time travel: after every `jump` steps
    down, go back up `jump` steps and redo them, `repeats - 1` times (no travel with jump 0 or repeats
    1). t_next = -1 is the clean image; a move with t_next > t is a jump back up (re-noising)."""
    pts = grid + [-1]
    if jump < 0 or repeats < 1:
        raise GuardError("--jump must be >= 0 and --repeats >= 1")
    moves, i, done = [], 0, {}
    while i < len(grid):
        moves.append((pts[i], pts[i + 1]))
        i += 1
        back = done.get(i, 0)
        if jump and repeats > 1 and i % jump == 0 and i < len(grid) and back < repeats - 1:
            done[i] = back + 1
            moves.append((pts[i], pts[i - jump]))
            i -= jump
    return moves


@torch.inference_mode()
def ddnm(model: nn.Module, schedule: NoiseSchedule, op: Operator, y: torch.Tensor, shape: tuple[int, ...], *,
         steps: int = 100, eta: float = 0.85, jump: int = 0, repeats: int = 1, labels: torch.Tensor | None = None,
         guidance: float = 1.0, x_T: torch.Tensor | None = None, generator: torch.Generator | None = None,
         precision: str = "fp32", progress: bool = False) -> torch.Tensor:
    """Restore images of `shape` (B, C, H, W) from measurements y = A x, in [-1, 1].

    `x_T` replaces the starting noise (the watermark's hook, as in `sample`); with eta = 0 and no time
    travel the run is deterministic given x_T. eta = 0.85 is DDNM's default."""
    if eta < 0:
        raise GuardError(f"eta must be >= 0, got {eta}")
    device = next(model.parameters()).device
    model.eval()
    y = y.to(device, torch.float32)
    x = randn(shape, generator, device) if x_T is None else x_T.to(device, torch.float32)
    labels = labels.to(device) if labels is not None else None
    moves = travel_schedule(timesteps_for(schedule.num_timesteps, steps), jump, repeats)
    with autocast_for(device, precision):
        for t, t_next in tqdm(moves, disable=not progress, desc=f"ddnm {op.name}", leave=False):
            ab_t = schedule.alpha_bar(t, x)
            if t_next > t:  # time travel: q(x_next | x_t) = N(sqrt(ab_next/ab_t) x_t, (1 - ab_next/ab_t) I)
                a = schedule.alpha_bar(t_next, x) / ab_t
                x = a.sqrt() * x + (1 - a).sqrt() * randn(tuple(x.shape), generator, device)
                continue
            tt = torch.full((x.shape[0],), t, device=device, dtype=torch.long)
            eps = guided_eps(model, x, tt, labels, guidance)
            # 1. the model's clean estimate x0|t (Song et al. Eq. 12), clipped to the data range
            x0 = ((x - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()).clamp(-1, 1)
            # 2. range-null decomposition: the measurement decides the range part (DDNM Eq. 11)
            x0 = op.project(x0, y)
            if t_next < 0:
                x = x0
                break
            # 3. DDIM step from the corrected estimate, eps re-derived so x_t stays on its path (Eq. 12, 16)
            ab_prev = schedule.alpha_bar(t_next, x)
            eps = (x - ab_t.sqrt() * x0) / (1 - ab_t).sqrt()
            sigma = eta * ((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)).sqrt()
            x = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma ** 2).clamp(min=0).sqrt() * eps
            if eta > 0:
                x = x + sigma * randn(tuple(x.shape), generator, device)
    return finish(x.float(), op, y)


def colorize_image(model: nn.Module, schedule: NoiseSchedule, luma: torch.Tensor, samples: int = 1,
                   **kw) -> torch.Tensor:
    """Colour for a (B, 1, H, W) grey image of any size from a square RGB model: DDNM colorization of a
    thumbnail at the model's size, its colours upsampled, then the full-resolution luma put back by the
    gray projection. Chroma is low-frequency, so the thumbnail's colours suffice, and gray(out) = luma
    holds at full resolution. With `samples` > 1 each image's thumbnail is drawn that many times and the
    colours averaged (the posterior mean: less error, truer saturation); an x_T in `kw` is then
    (B * samples, 3, S, S). `kw` goes to `ddnm` (steps, eta, x_T, generator ...)."""
    size = model.config.image_size
    if model.config.in_channels != 3:
        raise GuardError("colorization needs a colour (RGB) model; the bundled one is photos32")
    op = gray()
    small = F.interpolate(luma.float(), size=(size, size), mode="area") if luma.shape[-2:] != (size, size) else luma
    b = luma.shape[0]
    small_k = small.repeat_interleave(samples, 0)
    thumb = ddnm(model, schedule, op, small_k, (b * samples, 3, size, size), **kw)
    if samples > 1:
        thumb = finish(thumb.view(b, samples, 3, size, size).mean(1), op, small.float())
    up = thumb if luma.shape[-2:] == (size, size) else F.interpolate(thumb, size=luma.shape[-2:], mode="bilinear",
                                                                      align_corners=False)
    return finish(up, op, luma.float())


def finish(x: torch.Tensor, op: Operator, y: torch.Tensor, iters: int = 100, tol: float = 1e-4) -> torch.Tensor:
    """Alternate the clamp to [-1, 1] and the projection onto A x = y (POCS), ending on the clamp: the
    output is a valid image and agrees with the measurement to within what the range allows. Stops
    early once the clamped image is within `tol` of the measurement everywhere (most images need a few
    rounds; only pixels pushed past the range need more)."""
    for i in range(iters):
        x = op.project(x.clamp(-1, 1), y)
        if i % 5 == 4 and (op.forward(x.clamp(-1, 1)) - op.forward(x)).abs().max() < tol:
            break
    return x.clamp(-1, 1)


def consistency(x: torch.Tensor, op: Operator, y: torch.Tensor) -> torch.Tensor:
    """Per image ||A x - y||_2 / sqrt(numel(y)): the RMS measurement error, in data units ([-1, 1])."""
    r = (op.forward(x.float()) - y.float()).flatten(1)
    return r.norm(dim=1) / math.sqrt(r.shape[1])


__all__ = ["Operator", "downsample", "blur", "blur_image", "inpaint", "gray", "travel_schedule", "ddnm", "colorize_image",
           "finish", "consistency", "SCALES", "LUMA"]
