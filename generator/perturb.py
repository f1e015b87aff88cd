"""Image perturbations shared by the watermark's robustness suite and the detector's augmentation
and evaluation: rotation, JPEG, random resized crop, blur, noise, brightness, resize, median filter,
and the background edits (tidy: near-black to black; faint noise on the background only).

Every function takes a batch (B, C, H, W) in [-1, 1] and a torch.Generator and returns a batch in
[-1, 1] of the same shape. Pixel arithmetic happens in float on [0, 1] and is clamped, never
wrapped around through uint8 (a known bug in the anchors' noise attack). JPEG goes through a real
encoder and back through the project's safe decoder.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from ddpm_guard.generator.image_io import decode_image, encode_jpeg, to_tensor

def _to01(x: torch.Tensor) -> torch.Tensor:
    return (x + 1) / 2


def _from01(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(0, 1) * 2 - 1


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate about the centre; uncovered corners are black, as in torchvision's default fill."""
    return TF.rotate(x, degrees, interpolation=TF.InterpolationMode.BILINEAR, fill=-1.0).clamp(-1, 1)


def jpeg(x: torch.Tensor, quality: int | Sequence[int]) -> torch.Tensor:
    """A real JPEG round trip through the project's encoder and safe decoder; `quality` is one value or
    one per image."""
    qs = [quality] * len(x) if isinstance(quality, int) else [int(q) for q in quality]
    out = [to_tensor(decode_image(encode_jpeg(img, q), mode="L" if img.shape[0] == 1 else "RGB"))
           for img, q in zip(x, qs)]
    return torch.stack(out)


def random_resized_crop(x: torch.Tensor, gen: torch.Generator, scale: float = 0.75, ratio: float = 0.75) -> torch.Tensor:
    """torchvision's RandomResizedCrop with scale and ratio pinned, as Tree-Ring runs it: a crop of
    `scale` of the area with aspect `ratio`, at a random place, resized back to the full size."""
    _, _, h, w = x.shape
    cw = min(w, max(1, round(math.sqrt(scale * h * w * ratio))))
    ch = min(h, max(1, round(math.sqrt(scale * h * w / ratio))))
    out = []
    for img in x:
        top = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
        left = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
        crop = img[None, :, top:top + ch, left:left + cw]
        out.append(F.interpolate(crop, size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0])
    return torch.stack(out).clamp(-1, 1)


def gaussian_blur(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    k = 2 * math.ceil(3 * sigma) + 1
    return TF.gaussian_blur(x, kernel_size=[k, k], sigma=[sigma, sigma]).clamp(-1, 1)


def gaussian_noise(x: torch.Tensor, gen: torch.Generator, std: float | torch.Tensor = 0.1) -> torch.Tensor:
    """Additive N(0, std^2) on [0, 1] pixels, clamped to [0, 1] (no uint8 wrap-around); `std` is one value
    or one per image."""
    s = std.reshape(-1, 1, 1, 1) if torch.is_tensor(std) else std
    return _from01(_to01(x) + s * torch.randn(x.shape, generator=gen))


def tidy(x: torch.Tensor, level: float | torch.Tensor) -> torch.Tensor:
    """Set every pixel at or below `level` (8-bit levels, one value or one per image) to exactly black:
    what anyone tidying a fake does to its faint grey background."""
    lv = torch.as_tensor(level, dtype=x.dtype).reshape(-1, 1, 1, 1) if torch.is_tensor(level) else level
    return torch.where(x <= -1 + 2 * lv / 255, torch.full_like(x, -1.0), x)


def background_noise(x: torch.Tensor, gen: torch.Generator, amplitude: float | torch.Tensor,
                     background: float = 8.0) -> torch.Tensor:
    """Faint noise on the background only (pixels at or below `background` levels): |N(0, a^2)| in 8-bit
    levels, one amplitude or one per image. A real digit photographed or re-rendered gets this."""
    a = torch.as_tensor(amplitude, dtype=x.dtype).reshape(-1, 1, 1, 1)
    bg = x <= -1 + 2 * background / 255
    return torch.where(bg, (x + 2 * a / 255 * torch.randn(x.shape, generator=gen).abs()).clamp(-1, 1), x)


def brightness(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Multiply [0, 1] pixels by `factor` and clamp: torchvision's adjust_brightness."""
    return _from01(_to01(x) * factor)


def random_brightness(x: torch.Tensor, gen: torch.Generator, low: float = 0.0, high: float = 6.0) -> torch.Tensor:
    f = low + (high - low) * torch.rand(len(x), generator=gen)
    return _from01(_to01(x) * f[:, None, None, None])


def resize_and_back(x: torch.Tensor, factor: float = 0.5) -> torch.Tensor:
    """Downscale by `factor` (antialiased) and upscale back to the original size (bilinear)."""
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, round(h * factor)), max(1, round(w * factor))), mode="bilinear",
                          antialias=True, align_corners=False)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False).clamp(-1, 1)


def median_filter(x: torch.Tensor, size: int = 3) -> torch.Tensor:
    p = size // 2
    padded = F.pad(x, (p, p, p, p), mode="reflect")
    patches = padded.unfold(2, size, 1).unfold(3, size, 1)  # (B, C, H, W, k, k)
    return patches.reshape(*x.shape, size * size).median(dim=-1).values
