"""Reading our marks: ONE path, for decoded images and for files, with one result type (MarkResult) and one
p-value combination.

Two marks, two readers:
- the guided codeword, read by the robust decoder with no inversion (watermark.guided), where the decoder reads the
  model's image shape;
- the keyed x_T (Gaussian Shading), read by DDIM inversion (watermark.latent), ~50x slower: `deep`.
Every key of the ring reads the same decoder logits and the same inverted latent. Each reader's p-value is corrected
for everything it tried (keys, nonces, views, rotation candidates), and the two combine by Sidak, so a ring as a
whole keeps its false-positive rate at alpha.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import torch
from tqdm.auto import tqdm

from ddpm_guard.generator.checkpoint import load_model
from ddpm_guard.generator.errors import GuardError
from ddpm_guard.generator.image_io import expand_paths, fit_to, load_image
from ddpm_guard.watermark.guided.read import decode_logits, decoder_and_center, guided_applies
from ddpm_guard.watermark.guided.statistic import read_logits
from ddpm_guard.watermark.keys import WatermarkKey
from ddpm_guard.watermark.latent.codec import Codec, Scheme
from ddpm_guard.watermark.latent.read import verify as verify_latent
from ddpm_guard.watermark.pvalues import combine, sidak

DEFAULT_STEPS = 10  # DDIM inversion steps; chosen by measurement (BENCHMARKS.md, watermark section)


@dataclass(frozen=True)
class MarkResult:
    """What one image says about a key ring."""
    detected: bool  # p_value < alpha
    p_value: float  # both readers combined, corrected for the ring
    key_label: str | None  # the ring's key that matched, when detected
    payload: str | None  # hex, when detected and its keyed tag confirms it
    payload_valid: bool
    p_guided: float | None  # the guided reading's best key, Sidak over the ring (None: not read)
    p_latent: float | None  # the inversion's (None: not run)
    zero_bit_agreement: int | None  # the guided reading's agreeing zero-bit chips, of 32
    bit_errors_corrected: int | None  # the x_T mark's repetition code
    candidate: str | None  # the x_T reading's geometric candidate (the rotation search)

    def as_dict(self) -> dict:
        return asdict(self)


@lru_cache(maxsize=64)
def ring_codec(key: WatermarkKey, shape: tuple[int, int, int], scheme: Scheme) -> Codec:
    """One Codec per (key, shape, scheme), kept: its 256 key streams cost about 5 ms to derive, which a
    scan would otherwise pay on every request."""
    return Codec(key, shape, scheme)


def verify_images(images: torch.Tensor, keys: dict[str, WatermarkKey], model: torch.nn.Module, schedule, *,
                  alpha: float = 0.01, steps: int | None = None, scheme: Scheme = Scheme(), deep: bool = True,
                  guided: bool = False, search: bool = False, decoder: str | None = None) -> list[MarkResult]:
    """Test (B, C, H, W) decoded images in [-1, 1] against a key ring {label: key}. `guided`: read the guided mark
    (where the decoder reads this shape); `deep`: also invert for the x_T mark (always where the guided mark cannot be
    read, and with `search`, which adds 24 inverse rotations). `decoder`: a (private) decoder folder instead of the
    bundled one."""
    if not 0 < alpha < 1:
        raise GuardError(f"alpha must be between 0 and 1, got {alpha}")
    n = len(images)
    if not keys or n == 0:  # an empty key ring tests nothing
        return [MarkResult(False, 1.0, None, None, False, None, None, None, None, None) for _ in range(n)]
    cfg = model.config
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    x = fit_to(images, shape)
    fast = guided and guided_applies(shape, decoder)
    deep = deep or search or not fast
    best: list[tuple[float, str | None, object]] = [(1.0, None, None)] * n  # the guided reading's best key
    if fast:
        logits, (_, cal) = decode_logits(x, decoder), decoder_and_center(decoder)
        for label, key in keys.items():
            for i, r in enumerate(read_logits(logits, cal, key)):
                p = sidak(r.p_value, len(keys))
                if p < best[i][0]:
                    best[i] = (p, label, r)
    latent = [None] * n
    if deep:
        ring = {label: ring_codec(key, shape, scheme) for label, key in keys.items()}
        latent = verify_latent(x, ring, model, schedule, alpha=alpha, steps=steps or DEFAULT_STEPS, search=search)
    out = []
    for (pg, label_g, g), v in zip(best, latent):
        p = combine(([pg] if fast else []) + ([v.p_value] if v is not None else []))
        detected = p < alpha
        by_guided = v is None or (fast and pg <= v.p_value)  # the reading that decides names the key and payload
        label, rd = (label_g, g) if by_guided else (v.key_label, v)
        valid = bool(detected and rd is not None and rd.payload_valid)
        out.append(MarkResult(detected, p, label if detected else None, rd.payload if valid else None, valid,
                              pg if fast else None, v.p_value if v is not None else None,
                              g.agreements if g is not None else None,
                              v.bit_errors_corrected if v is not None else None,
                              v.candidate if v is not None else None))
    return out


def verify_files(paths: list[str], keys: dict[str, WatermarkKey], *, checkpoint: str | None = None,
                 alpha: float = 0.01, steps: int | None = None, search: bool = False, deep: bool = True,
                 progress: bool = False, batch_size: int = 256, decoder: str | None = None) -> list[dict]:
    """`verify_images` over image files and folders, read through the one safe decoder: one row per file,
    {path, **MarkResult}, or {path, error} for a file that could not be read (which does not stop the run). Files
    are read `batch_size` at a time, which changes no row (the readers run in fixed micro-batches)."""
    if not 0 < alpha < 1:
        raise GuardError(f"--alpha must be between 0 and 1, got {alpha}")
    model, schedule, _ = load_model(checkpoint)
    cfg = model.config
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    mode = "L" if cfg.in_channels == 1 else "RGB"
    rows: list[dict] = []
    todo: list[tuple[int, torch.Tensor]] = []  # (row index, image) of the readable files

    def flush() -> None:
        results = verify_images(torch.stack([img for _, img in todo]), keys, model, schedule, alpha=alpha,
                                steps=steps, deep=deep, guided=True, search=search, decoder=decoder)
        for (i, _), r in zip(todo, results):
            rows[i].update(r.as_dict())
        todo.clear()

    for p, problem in tqdm(expand_paths(paths), disable=not progress, desc="verify", leave=False):
        if problem is not None:
            rows.append({"path": str(p), "error": problem})
            continue
        try:
            img = load_image(p, mode=mode)
        except GuardError as e:
            rows.append({"path": str(p), "error": str(e)})
            continue
        rows.append({"path": str(p)})
        todo.append((len(rows) - 1, fit_to(img[None], shape)[0]))
        if len(todo) == batch_size:
            flush()
    if todo:
        flush()
    return rows
