"""File-level verification: the functions the CLI, the scan and the service call.

Two marks, two readers:
- fast (the default): the guided codeword read by the robust decoder, no inversion (watermark.guided);
- deep: the keyed x_T (Gaussian Shading) read by DDIM inversion (watermark.detect), ~50x slower.
With both, each image gets one p-value: Sidak over the two tests' minimum (watermark.guided.combine).
The guided mark exists only where the decoder reads the model's images; elsewhere deep is the only
reader and runs whatever `deep` says."""

from __future__ import annotations

from functools import lru_cache

import torch
from tqdm.auto import tqdm

from generator.checkpoint import load_model
from generator.errors import GuardError
from generator.image_io import expand_paths, fit_to, load_image
from watermark.detect import sidak, verify
from watermark.embed import Codec, Scheme
from watermark.guided import combine, decode_logits, decoder_and_center, guided_applies, read_logits, verify_guided
from watermark.keys import WatermarkKey

DEFAULT_STEPS = 10  # DDIM inversion steps; chosen by measurement (BENCHMARKS.md, watermark section)


def verify_files(paths: list[str], key: WatermarkKey, *, checkpoint: str | None = None, alpha: float = 0.01,
                 steps: int | None = None, search: bool = False, scheme: Scheme = Scheme(), deep: bool = True,
                 progress: bool = False, batch_size: int = 256, decoder: str | None = None) -> list[dict]:
    """One dict per image: {path, watermarked, p_value, payload, payload_valid, bit_errors_corrected,
    zero_bit_agreement, p_guided, p_latent, candidate} or {path, error} for a file that could not be
    read. Unreadable files don't stop the run. Both readers by default; `deep=False` reads only the
    guided mark (no inversion: for images made with the guided mark). `decoder`: a decoder folder (a private
    one, calibrated) instead of the bundled one, for marks made with `sample --guided-mark --decoder`."""
    if not 0 < alpha < 1:
        raise GuardError(f"--alpha must be between 0 and 1, got {alpha}")
    model, schedule, _ = load_model(checkpoint)
    cfg = model.config
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    mode = "L" if cfg.in_channels == 1 else "RGB"
    fast = guided_applies(shape, decoder)
    deep = deep or search or not fast
    codec = Codec(key, shape, scheme)
    rows: list[dict] = []
    todo: list[tuple[int, torch.Tensor]] = []  # (row index, image) of the readable files

    def flush() -> None:
        x = torch.stack([img for _, img in todo])
        reads = verify_guided(x, key, decoder=decoder) if fast else [None] * len(x)
        lat = verify(x, codec, model, schedule, alpha=alpha, steps=steps or DEFAULT_STEPS, search=search) \
            if deep else [None] * len(x)
        for (i, _), g, v in zip(todo, reads, lat):
            rows[i].update(_row(g, v, alpha))
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


def _row(g, v, alpha: float) -> dict:
    """One file's answer from the guided reading g and/or the inversion verdict v (either may be None)."""
    ps = [r.p_value for r in (g, v) if r is not None]
    p = combine(ps)
    valid = [r for r in (g, v) if r is not None and r.payload_valid]
    return {"watermarked": p < alpha, "p_value": p, "payload": valid[0].payload if valid else None,
            "payload_valid": bool(valid), "bit_errors_corrected": v.bit_errors_corrected if v is not None else None,
            "zero_bit_agreement": g.agreements if g is not None else None,
            "p_guided": g.p_value if g is not None else None, "p_latent": v.p_value if v is not None else None,
            "candidate": v.candidate if v is not None else None}


@lru_cache(maxsize=64)
def ring_codec(key: WatermarkKey, shape: tuple[int, int, int], scheme: Scheme) -> Codec:
    """One Codec per (key, shape, scheme), kept: its 256 key streams cost about 5 ms to derive, which a
    scan would otherwise pay on every request."""
    return Codec(key, shape, scheme)


def verify_images(images: torch.Tensor, keys: dict[str, WatermarkKey], model: torch.nn.Module, schedule, *,
                  alpha: float = 0.01, steps: int | None = None, scheme: Scheme = Scheme(),
                  deep: bool = True, guided: bool = False,
                  decoder: str | None = None) -> list[dict]:
    """Test (B, C, H, W) decoded images in [-1, 1] against a key ring {label: key} in one pass: the
    inversion runs once per image (the x_T mark, which every marked output carries); with `guided` the
    decoder also runs once per image and every key reads its logits (Sidak over the keys), and
    `deep=False` then skips the inversion (`watermark.detect.verify` with a ring, Sidak over every nonce of every key).
    The two readers' p-values combine by Sidak, so the ring as a whole keeps its false-positive rate
    at alpha. `decoder`: a (private) decoder folder instead of the bundled one. One dict per image: {detected,
    p_value, key_label, payload, payload_valid, bit_errors_corrected}."""
    if not 0 < alpha < 1:
        raise GuardError(f"alpha must be between 0 and 1, got {alpha}")
    if not keys:  # an empty key ring tests nothing
        return [{"detected": False, "p_value": 1.0, "key_label": None, "payload": None, "payload_valid": False,
                 "bit_errors_corrected": None} for _ in range(len(images))]
    if len(images) == 0:
        return []
    cfg = model.config
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    x = fit_to(images, shape)
    fast = guided and guided_applies(shape, decoder)
    deep = deep or not fast
    n = len(x)
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
        latent = verify(x, ring, model, schedule, alpha=alpha, steps=steps or DEFAULT_STEPS)
    out = []
    for (pg, label_g, g), v in zip(best, latent):
        ps = ([pg] if fast else []) + ([v.p_value] if v is not None else [])
        p = combine(ps)
        detected = p < alpha
        by_guided = v is None or (fast and pg <= v.p_value)
        label = label_g if by_guided else v.key_label
        rd = g if by_guided else v
        valid = bool(detected and rd is not None and rd.payload_valid)
        out.append({"detected": detected, "p_value": p, "key_label": label if detected else None,
                    "payload": rd.payload if valid else None, "payload_valid": valid,
                    "bit_errors_corrected": v.bit_errors_corrected if v is not None else None})
    return out
