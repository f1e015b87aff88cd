"""The DDPM applications for the CLI and the service: refinement (super-resolution, deblurring),
inpainting and colorization, with the unconditional priors and DDNM (`generator.restore`).

Every output goes through the same marking as `sample`: the watermark's keyed x_T
(`watermark.embed.watermarked_noise`) starts the reverse process, and `sign` adds the C2PA manifest
and IPTC XMP, here with the source type "composite with trained algorithmic media" (an edit of a
real image, not a picture made from nothing). With a key the run is deterministic DDIM (eta 0, no
time travel), which the watermark's inversion needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ddpm_guard.generator.errors import GuardError
from ddpm_guard.generator.restore import SCALES, blur, colorize_image, ddnm, downsample, gray, inpaint

MASKS = ("box", "half", "strokes")  # built-in masks; anything else is a mask image file
DEFAULT_STEPS = 100  # DDNM steps (BENCHMARKS.md, applications: quality saturates by 100 on the digit model)
DEFAULT_ETA = 0.85  # DDNM's stochasticity without a key (Wang et al. 2023); a key forces 0
# inpainting's time travel without a key (jump, repeats): on the box mask, 10x5 lifts class accuracy from
# 0.445 to 0.61 (biharmonic: 0.525) for 5.7x the time; 10x10 gives 0.625 for 11x (BENCHMARKS.md)
INPAINT_TRAVEL = (10, 5)
# colorize averages this many samples' colours without a key: on the held-out patches the mean of 4 matches
# the true colourfulness (31.0 vs 30.8; one sample: 36.2) and lowers the histogram error 0.763 -> 0.694
COLOR_SAMPLES = 4


@dataclass(frozen=True)
class Marking:
    """How an output is marked: the watermark key (None = none) and payload, and the run's seed."""
    key: object | None = None  # watermark.keys.WatermarkKey
    payload: int = 0
    seed: int = 0


def _start(model: torch.nn.Module, n: int, marking: Marking, eta: float, jump: int | None, repeats: int | None,
           travel: tuple[int, int] = (0, 1)):
    """(x_T, generator, eta, jump, repeats): the keyed x_T when marking, else Gaussian noise from the
    seed. jump/repeats None means `travel` without a key and no time travel with one (the watermark's
    inversion needs a deterministic run); asking for time travel with a key is an error."""
    cfg = model.config
    shape = (n, cfg.in_channels, cfg.image_size, cfg.image_size)
    gen = torch.Generator().manual_seed(marking.seed)
    if marking.key is None:
        jump, repeats = (travel[0] if jump is None else jump), (travel[1] if repeats is None else repeats)
        return torch.randn(shape, generator=gen), gen, eta, jump, repeats
    if (jump or 0) and (repeats or 1) > 1:
        raise GuardError("time travel (--jump/--repeats) re-noises the run, which the watermark cannot survive; "
                         "drop --jump/--repeats or the watermark key")
    from ddpm_guard.watermark.latent.codec import Codec, watermarked_noise

    codec = Codec(marking.key, shape[1:])
    return watermarked_noise(codec, marking.payload, n, gen), gen, 0.0, 0, 1


def is_gray(img: torch.Tensor, tol: float = 2 / 127.5) -> bool:
    """A (C, H, W) image whose channels agree to within two 8-bit levels is grey, whatever its mode."""
    return img.shape[0] == 1 or bool((img.amax(0) - img.amin(0)).max() <= tol)


def match_channels(img: torch.Tensor, model: torch.nn.Module, name: str = "the image") -> torch.Tensor:
    """The image in the model's channels, or one clear error: a colour image to the grey digit model is
    refused (its colours would be silently thrown away)."""
    want = model.config.in_channels
    if img.shape[0] == want:
        return img
    if want == 1 and is_gray(img):
        return img[:1]
    if want == 1:
        raise GuardError(f"{name} is a colour image but the model is greyscale (digits); pass a grey image, or use "
                         "`ddpm-guard colorize` to add colour to a grey one")
    return img.expand(3, -1, -1)  # grey to a colour model: the same grey on every channel


def built_in_mask(name: str, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """(1, 1, H, W) mask, 1 = known, 0 = to fill: 'box' (the middle half of each side), 'half' (the
    right half) or 'strokes' (five random thick strokes, seeded)."""
    known = torch.ones(1, 1, h, w)
    if name == "box":
        known[..., h // 4: h - h // 4, w // 4: w - w // 4] = 0
    elif name == "half":
        known[..., :, w // 2:] = 0
    elif name == "strokes":
        g = torch.Generator().manual_seed(seed)
        yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
        for _ in range(5):
            p0, p1 = torch.rand(2, generator=g) * torch.tensor([h, w]), torch.rand(2, generator=g) * torch.tensor([h, w])
            d = p1 - p0
            s = (((yy - p0[0]) * d[0] + (xx - p0[1]) * d[1]) / d.pow(2).sum().clamp(min=1e-6)).clamp(0, 1)
            dist = ((yy - p0[0] - s * d[0]) ** 2 + (xx - p0[1] - s * d[1]) ** 2).sqrt()
            known[0, 0][dist <= max(1.0, min(h, w) / 14)] = 0
    else:
        raise GuardError(f"unknown built-in mask {name!r}; use {', '.join(MASKS)} or a mask image file")
    return known


def mask_from_image(mask: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A decoded mask image (C, H, W) in [-1, 1] -> (1, 1, H, W) known mask. White (>= 128) marks the
    pixels to fill, black the ones to keep, as in diffusers' inpainting pipelines."""
    if tuple(mask.shape[-2:]) != tuple(shape):
        raise GuardError(f"the mask is {mask.shape[-1]}x{mask.shape[-2]} but the image is {shape[1]}x{shape[0]}; "
                         "they must be the same size")
    return (mask.float().mean(0, keepdim=True)[None] < 0).float()


def _check_size(img: torch.Tensor, size: int, what: str) -> None:
    if tuple(img.shape[-2:]) != (size, size):
        raise GuardError(f"{what} must be {size}x{size} for this model, got {img.shape[-1]}x{img.shape[-2]}")


def refine(model: torch.nn.Module, schedule, img: torch.Tensor, *, scale: int | None = None,
           deblur: float | None = None, steps: int = DEFAULT_STEPS, eta: float = DEFAULT_ETA, jump: int | None = None,
           repeats: int | None = None, marking: Marking = Marking(), precision: str = "fp32") -> torch.Tensor:
    """Super-resolve (scale 2 or 4: a size/scale input becomes the model's size) or deblur (a Gaussian
    of std `deblur` pixels, at the model's size) one (C, H, W) image. Returns (C, S, S) in [-1, 1]."""
    if (scale is None) == (deblur is None):
        raise GuardError("give exactly one of --scale and --deblur")
    img = match_channels(img, model)
    size = model.config.image_size
    if scale is not None:
        if scale not in SCALES:
            raise GuardError(f"--scale {scale} is not supported; use {' or '.join(map(str, SCALES))}")
        if size % scale:
            raise GuardError(f"this model's {size}x{size} images cannot be divided by --scale {scale}")
        _check_size(img, size // scale, f"an input to upscale {scale}x")
        op = downsample(scale)
    else:
        _check_size(img, size, "the image to deblur")
        op = blur(float(deblur), (size, size))
    x_T, gen, eta, jump, repeats = _start(model, 1, marking, eta, jump, repeats)
    return ddnm(model, schedule, op, img[None], tuple(x_T.shape), steps=steps, eta=eta, jump=jump, repeats=repeats,
                x_T=x_T, generator=gen, precision=precision)[0]


def inpaint_image(model: torch.nn.Module, schedule, img: torch.Tensor, known: torch.Tensor, *,
                  steps: int = DEFAULT_STEPS, eta: float = DEFAULT_ETA, jump: int | None = None,
                  repeats: int | None = None, marking: Marking = Marking(), precision: str = "fp32") -> torch.Tensor:
    """Fill the pixels where `known` (1, 1, H, W) is 0; the known pixels come back exactly. Without a key
    the run time-travels (INPAINT_TRAVEL) unless jump/repeats say otherwise."""
    img = match_channels(img, model)
    _check_size(img, model.config.image_size, "the image to inpaint")
    if known.shape[-2:] != img.shape[-2:]:
        raise GuardError(f"the mask is {known.shape[-1]}x{known.shape[-2]} but the image is "
                         f"{img.shape[-1]}x{img.shape[-2]}; they must be the same size")
    if known.min() > 0:
        raise GuardError("the mask is empty: it marks no pixel to fill (white = fill, black = keep)")
    x_T, gen, eta, jump, repeats = _start(model, 1, marking, eta, jump, repeats, INPAINT_TRAVEL)
    out = ddnm(model, schedule, inpaint(known), img[None] * known, tuple(x_T.shape), steps=steps, eta=eta,
               jump=jump, repeats=repeats, x_T=x_T, generator=gen, precision=precision)[0]
    return torch.where(known[0].bool(), img, out)  # known pixels bit for bit


def colorize(model: torch.nn.Module, schedule, img: torch.Tensor, *, steps: int = DEFAULT_STEPS,
             eta: float = DEFAULT_ETA, jump: int | None = None, repeats: int | None = None, samples: int | None = None,
             marking: Marking = Marking(), precision: str = "fp32") -> torch.Tensor:
    """Colour for a grey (1, H, W) image of any size (a colour image is colorized from its luma). Without
    a key the colours of `samples` (default COLOR_SAMPLES) runs are averaged, then the luma is put back;
    with a key one run (an average of runs would carry no one run's x_T)."""
    luma = img if img.shape[0] == 1 else gray().forward(img[None].float())[0]
    if samples is not None and samples < 1:
        raise GuardError(f"--samples must be at least 1, got {samples}")
    if marking.key is not None and (samples or 1) > 1:
        raise GuardError("averaging several samples (--samples) would erase the watermark; drop --samples or the key")
    k = 1 if marking.key is not None else (samples or COLOR_SAMPLES)
    x_T, gen, eta, jump, repeats = _start(model, k, marking, eta, jump, repeats)
    return colorize_image(model, schedule, luma[None], samples=k, steps=steps, eta=eta, jump=jump, repeats=repeats,
                          x_T=x_T, generator=gen, precision=precision)[0]


__all__ = ["Marking", "MASKS", "INPAINT_TRAVEL", "COLOR_SAMPLES", "built_in_mask", "mask_from_image", "match_channels", "is_gray", "refine",
           "inpaint_image", "colorize", "DEFAULT_STEPS", "DEFAULT_ETA"]
