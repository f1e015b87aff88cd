"""Real and fake sets for the detector, stored identically, and the edits both classes share.

Real: the mnist5k training digits, split per digit into detector-train (first 320 of each digit) and
calibration (last 80). The 1,000 held-out digits are used for evaluation only.
Fake: samples of a DDPM from several samplers, so no one sampler is a shortcut, plus "aligned" fakes
(real digits noised to t and denoised by the model; close to real, so the classifier has to learn the
generator's traces rather than the content). detector.sources groups them into families.

Both classes are stored as 8-bit images (what a PNG holds): the format can never tell them apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ddpm_guard.generator.data import load_dataset
from ddpm_guard.generator.image_io import quantize
from ddpm_guard.generator.perturb import background_noise, gaussian_blur, gaussian_noise, jpeg, resize_and_back, tidy
from ddpm_guard.generator.pipeline import generate
from ddpm_guard.generator.samplers import denoise_from

DETECTOR_TRAIN_PER_DIGIT = 320  # of the 400 training digits; the other 80 calibrate


@dataclass(frozen=True)
class FakeSource:
    """One way of making fakes with a generator."""
    name: str
    sampler: str = "ddim"
    steps: int | None = None  # None: the sampler's default
    eta: float = 0.0
    variance: str = "beta_tilde"
    guidance: float = 1.5
    precision: str = "fp32"
    aligned: tuple[int, int] | None = None  # SDEdit from real digits noised to t in [lo, hi]


TRAIN_SOURCES = (
    FakeSource("ddpm50-beta_tilde", "ddpm", 50, variance="beta_tilde", guidance=1.0),
    FakeSource("ddpm50-beta", "ddpm", 50, variance="beta", guidance=1.0),
    FakeSource("ddim10-g1.5", steps=10, guidance=1.5),
    FakeSource("ddim25-g2", steps=25, guidance=2.0),
    FakeSource("ddim50-g1", steps=50, guidance=1.0),
    FakeSource("aligned-t100-600", steps=10, guidance=1.0, aligned=(100, 600)),
)
# sampler settings never used for training data: the generalisation test
HELDOUT_SOURCES = (
    FakeSource("ddim5-g1.5", steps=5, guidance=1.5),
    FakeSource("ddim20-eta0.5-g1.5", steps=20, eta=0.5, guidance=1.5),
    FakeSource("ddim25-g3", steps=25, guidance=3.0),
    FakeSource("ddim50-uncond", steps=50, guidance=0.0),
    FakeSource("ddim50-g1.5-bf16", steps=50, guidance=1.5, precision="bf16"),
)
ALIGNED_LEVELS = 6  # t is drawn from this many evenly spaced levels in [lo, hi], so batches share a t


def real_split(part: str) -> torch.Tensor:
    """'train' (3,200), 'calib' (800) or 'heldout' (1,000) real digits, 8-bit exact."""
    if part == "heldout":
        return load_dataset("mnist5k", "heldout").images
    images, rank = _train_digits_ranked()
    keep = rank < DETECTOR_TRAIN_PER_DIGIT if part == "train" else rank >= DETECTOR_TRAIN_PER_DIGIT
    return images[keep]  # boolean indexing copies: callers cannot alter the cache


@lru_cache(maxsize=1)
def _train_digits_ranked() -> tuple[torch.Tensor, torch.Tensor]:
    """The 4,000 training digits and each one's rank within its digit, read once per process."""
    ds = load_dataset("mnist5k", "train")
    rank = torch.zeros_like(ds.labels)
    for d in range(10):
        idx = (ds.labels == d).nonzero().flatten()
        rank[idx] = torch.arange(len(idx))
    return ds.images, rank


def make_fakes(model, schedule, source: FakeSource, n: int, seed: int, real: torch.Tensor | None = None,
               progress: bool = False) -> torch.Tensor:
    """n fakes in [-1, 1], 8-bit quantised. Aligned sources start from `real` (cycled)."""
    if source.aligned is None:
        x, _ = generate(model, schedule, n, guidance=source.guidance, sampler=source.sampler, steps=source.steps,
                        eta=source.eta, variance=source.variance, seed=seed, precision=source.precision,
                        progress=progress)
        return quantize(x)
    if real is None:
        raise ValueError("aligned fakes need real images to start from")
    gen = torch.Generator().manual_seed(seed)
    x0 = real[torch.arange(n) % len(real)]
    lo, hi = source.aligned
    levels = torch.linspace(lo, hi, ALIGNED_LEVELS).round().long()
    which = torch.randint(0, ALIGNED_LEVELS, (n,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    out = torch.empty_like(x0)
    for k, t in enumerate(levels.tolist()):
        idx = (which == k).nonzero().flatten()
        if len(idx) == 0:
            continue
        x_t = schedule.add_noise(x0[idx], noise[idx], torch.full((len(idx),), t))
        labels = None  # unconditional: the label of a real upload is unknown, and the layout comes from x_t
        out[idx] = denoise_from(model, schedule, x_t, t, source.steps or 10, labels=labels,
                                guidance=source.guidance, precision=source.precision)
    return quantize(out)


def cached_fakes(model, schedule, source: FakeSource, n: int, seed: int, cache: Path | None,
                 real: torch.Tensor | None = None, log=None) -> torch.Tensor:
    """make_fakes, stored as uint8 under `cache` keyed by the source, n and seed (a rerun reuses them)."""
    if cache is not None:
        path = Path(cache) / f"{source.name}-n{n}-seed{seed}.npy"
        if path.exists():
            return torch.from_numpy(np.load(path)).float() / 127.5 - 1.0
    if log:
        log(f"making {n} fakes: {source.name} ({asdict(source)})")
    x = make_fakes(model, schedule, source, n, seed, real)
    if cache is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy())
    return x


def fake_sets(model, schedule, sources: tuple[FakeSource, ...], n: int, seed: int, real: torch.Tensor,
              cache: Path | None = None, log=None) -> dict[str, torch.Tensor]:
    """{source name: fakes}; source i uses seed + i, so adding a source does not change the others."""
    return {src.name: cached_fakes(model, schedule, src, n, seed + i, cache, real, log) for i, src in enumerate(sources)}


# ---- augmentation: identical for both classes --------------------------------------------------

def augment(x: torch.Tensor, gen: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Each image independently, each operation with probability p (JPEG: always p, at q30-100 as
    CNNDetection and Rajan et al. train): resize x0.5-1 and back, blur sigma 0-1.5, shifts of up to 2 px,
    a tidied background (levels 4-48 set to black), faint background noise (0-10 levels), Gaussian noise
    sigma 0-0.08, a 6-10 px cutout, then JPEG q30-100. The same function serves real and fake, so no class
    gets its own artefacts, and each image is 8-bit quantised at the end, like every file."""
    b, _, h, w = x.shape
    x = x.clone()
    u = torch.rand(b, 8, generator=gen)
    q = torch.randint(30, 101, (b,), generator=gen)
    sig = 1.5 * torch.rand(b, generator=gen)
    fac = 0.5 + 0.5 * torch.rand(b, generator=gen)
    shift = torch.randint(-2, 3, (b, 2), generator=gen)
    level = 4 + 44 * torch.rand(b, generator=gen)
    amp = 10 * torch.rand(b, generator=gen)
    std = 0.08 * torch.rand(b, generator=gen)
    cut = torch.randint(6, 11, (b,), generator=gen)
    pos = torch.rand(b, 2, generator=gen)
    for i in range(b):
        img = x[i:i + 1]
        if u[i, 0] < p:  # resize x0.5-1 and back
            s = (max(2, round(h * fac[i].item())), max(2, round(w * fac[i].item())))
            img = F.interpolate(img, size=s, mode="bilinear", antialias=True, align_corners=False)
            img = F.interpolate(img, size=(h, w), mode="bilinear", align_corners=False).clamp(-1, 1)
        if u[i, 1] < p and sig[i] > 0.05:
            img = gaussian_blur(img, float(sig[i]))
        if u[i, 2] < p:
            dy, dx = shift[i].tolist()
            img = torch.roll(img, (dy, dx), (2, 3))
        if u[i, 3] < p / 2:
            img = tidy(img, float(level[i]))
        if u[i, 4] < p / 2:
            img = background_noise(img, gen, float(amp[i]))
        if u[i, 5] < p / 2:
            img = gaussian_noise(img, gen, float(std[i]))
        if u[i, 6] < p / 4:
            k = int(cut[i])
            y0, x0 = int(pos[i, 0] * (h - k)), int(pos[i, 1] * (w - k))
            img = img.clone()
            img[..., y0:y0 + k, x0:x0 + k] = -1
        if u[i, 7] < p:
            img = jpeg(img, int(q[i]))
        x[i] = img[0]
    return quantize(x)


def perturb_for_calibration(x: torch.Tensor, kind: str, gen: torch.Generator) -> torch.Tensor:
    """The benign edits uploads go through, with parameters drawn per image from ranges (never the exact
    settings `detector eval` reports), for fitting Platt and the threshold on reals as users upload them."""
    n = len(x)
    if kind == "clean":
        return x
    if kind == "jpeg":
        return jpeg(x, torch.randint(30, 96, (n,), generator=gen).tolist())
    if kind == "blur":
        s = 0.5 + torch.rand(n, generator=gen)
        return torch.cat([gaussian_blur(x[i:i + 1], float(s[i])) for i in range(n)])
    if kind == "resize":
        f = 0.4 + 0.5 * torch.rand(n, generator=gen)
        return torch.cat([resize_and_back(x[i:i + 1], float(f[i])) for i in range(n)])
    if kind == "noise":
        s = 0.01 + 0.07 * torch.rand(n, generator=gen)
        return quantize(gaussian_noise(x, gen, s))
    if kind == "tidy":  # both shortcut edits: a tidied background, or faint noise on it
        half = torch.rand(n, generator=gen) < 0.5
        a = tidy(x, 4 + 44 * torch.rand(n, generator=gen))
        b = quantize(background_noise(x, gen, 1 + 9 * torch.rand(n, generator=gen)))
        return torch.where(half[:, None, None, None], a, b)
    raise ValueError(f"unknown calibration perturbation {kind!r}")


CALIBRATION_PERTURBATIONS = ("clean", "jpeg", "blur", "resize", "noise", "tidy")
