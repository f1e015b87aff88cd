"""File-level verification: the function the CLI and the service call."""

from __future__ import annotations


import torch
from tqdm.auto import tqdm

from generator.checkpoint import load_model
from generator.errors import GuardError
from generator.image_io import expand_paths, fit_to, load_image
from generator.samplers import ddim_invert
from watermark.detect import decode_payload, read_latent, sidak, verify
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


def verify_images(images: torch.Tensor, keys: dict[str, WatermarkKey], model: torch.nn.Module, schedule, *,
                  alpha: float = 0.01, steps: int | None = None, scheme: Scheme = Scheme(),
                  batch_size: int = 128) -> list[dict]:
    """Test (B, C, H, W) decoded images in [-1, 1] against a key ring {label: key} in one pass.

    The DDIM inversion does not depend on the key, so it runs once per image and every key reads
    the same latent. The p-value is Sidak-corrected for every nonce of every key, so the ring as a
    whole keeps its false-positive rate at alpha. One dict per image:
    {detected, p_value, key_label, payload, payload_valid, bit_errors_corrected}."""
    if not 0 < alpha < 1:
        raise GuardError(f"alpha must be between 0 and 1, got {alpha}")
    if len(images) == 0:
        return []
    cfg = model.config
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    x = fit_to(images, shape)
    lat = torch.cat([ddim_invert(model, schedule, x[i:i + batch_size], steps or DEFAULT_STEPS)
                     for i in range(0, len(x), batch_size)]).cpu()
    m = scheme.num_nonces * max(1, len(keys))
    best: list[tuple[float, str | None, Codec | None, object]] = [(1.0, None, None, None)] * len(x)
    for label, key in keys.items():
        codec = Codec(key, shape, scheme)
        for i, rd in enumerate(read_latent(codec, lat)):
            if best[i][1] is None or rd.p_value < best[i][0]:
                best[i] = (rd.p_value, label, codec, rd)
    out = []
    for p, label, codec, rd in best:
        if codec is None:  # an empty key ring tests nothing
            out.append({"detected": False, "p_value": 1.0, "key_label": None, "payload": None,
                        "payload_valid": False, "bit_errors_corrected": None})
            continue
        p_adj = sidak(p, m)
        payload, valid = decode_payload(codec, rd.message)
        detected = p_adj < alpha
        out.append({"detected": detected, "p_value": p_adj, "key_label": label if detected else None,
                    "payload": payload if (detected and valid) else None, "payload_valid": bool(detected and valid),
                    "bit_errors_corrected": rd.errors_corrected})
    return out
