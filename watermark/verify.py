"""File-level verification: the function the CLI and the service call."""

from __future__ import annotations

from functools import lru_cache

import torch
from tqdm.auto import tqdm

from generator.checkpoint import load_model
from generator.errors import GuardError
from generator.image_io import expand_paths, load_image
from watermark.detect import verify
from watermark.embed import Codec, Scheme
from watermark.keys import WatermarkKey

DEFAULT_STEPS = 10  # DDIM inversion steps; chosen by measurement (BENCHMARKS.md, watermark section)


def verify_files(paths: list[str], key: WatermarkKey, *, checkpoint: str | None = None, alpha: float = 0.01,
                 steps: int | None = None, search: bool = False, scheme: Scheme = Scheme(),
                 progress: bool = False) -> list[dict]:
    """One dict per image: {path, watermarked, p_value, payload, payload_valid, bit_errors_corrected,
    candidate} or {path, error} for a file that could not be read. Unreadable files don't stop the run."""
    if not 0 < alpha < 1:
        raise GuardError(f"--alpha must be between 0 and 1, got {alpha}")
    model, schedule, _ = load_model(checkpoint)
    cfg = model.config
    codec = Codec(key, (cfg.in_channels, cfg.image_size, cfg.image_size), scheme)
    mode = "L" if cfg.in_channels == 1 else "RGB"
    rows = []
    for p, problem in tqdm(expand_paths(paths), disable=not progress, desc="verify", leave=False):
        if problem is not None:
            rows.append({"path": str(p), "error": problem})
            continue
        try:
            img = load_image(p, mode=mode)
        except GuardError as e:
            rows.append({"path": str(p), "error": str(e)})
            continue
        v = verify(img[None], codec, model, schedule, alpha=alpha, steps=steps or DEFAULT_STEPS, search=search)[0]
        rows.append({"path": str(p), "watermarked": v.watermarked, "p_value": v.p_value, "payload": v.payload,
                     "payload_valid": v.payload_valid, "bit_errors_corrected": v.bit_errors_corrected,
                     "candidate": v.candidate})
    return rows


@lru_cache(maxsize=64)
def ring_codec(key: WatermarkKey, shape: tuple[int, int, int], scheme: Scheme) -> Codec:
    """One Codec per (key, shape, scheme), kept: its 256 key streams cost about 5 ms to derive, which a
    scan would otherwise pay on every request."""
    return Codec(key, shape, scheme)


def verify_images(images: torch.Tensor, keys: dict[str, WatermarkKey], model: torch.nn.Module, schedule, *,
                  alpha: float = 0.01, steps: int | None = None, scheme: Scheme = Scheme(),
                  batch_size: int = 128) -> list[dict]:
    """Test (B, C, H, W) decoded images in [-1, 1] against a key ring {label: key} in one pass
    (`watermark.detect.verify` with a ring: one inversion per image, Sidak over every nonce of every
    key, so the ring as a whole keeps its false-positive rate at alpha). One dict per image:
    {detected, p_value, key_label, payload, payload_valid, bit_errors_corrected}."""
    if not 0 < alpha < 1:
        raise GuardError(f"alpha must be between 0 and 1, got {alpha}")
    if not keys:  # an empty key ring tests nothing
        return [{"detected": False, "p_value": 1.0, "key_label": None, "payload": None, "payload_valid": False,
                 "bit_errors_corrected": None} for _ in range(len(images))]
    if len(images) == 0:
        return []
    cfg = model.config
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    ring = {label: ring_codec(key, shape, scheme) for label, key in keys.items()}
    return [{"detected": v.watermarked, "p_value": v.p_value, "key_label": v.key_label if v.watermarked else None,
             "payload": v.payload if v.watermarked else None, "payload_valid": bool(v.watermarked and v.payload_valid),
             "bit_errors_corrected": v.bit_errors_corrected}
            for v in verify(images, ring, model, schedule, alpha=alpha, steps=steps or DEFAULT_STEPS,
                            batch_size=batch_size)]
