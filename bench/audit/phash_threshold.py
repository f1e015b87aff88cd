"""How many perceptual-hash bits separate a file from its re-saved copy, and distinct digits from each other?

Chooses the hash and api.audit.report.DUPLICATE_BITS: copies (JPEG q75/q50 re-saves, a x2 upscale, +-1 level noise)
of the 1,000 held-out digits against all pairs of distinct held-out digits.

    python bench/audit/phash_threshold.py
"""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from ddpm_guard.api.audit.engine import phash


def dhash(im) -> str:
    """The 64-bit difference hash (Krawetz), measured first and rejected (see api.audit.engine.phash)."""
    small = np.asarray(im.convert("L").resize((9, 8), Image.Resampling.BOX), dtype=np.int16)
    return f"{int(''.join('1' if b else '0' for b in (small[:, 1:] > small[:, :-1]).reshape(-1)), 2):016x}"
from ddpm_guard.generator.data import load_dataset
from ddpm_guard.generator.image_io import decode_image, to_uint8


def bits(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def measure(imgs: list, hash_fn) -> dict:
    hashes = [hash_fn(im) for im in imgs]
    rng = np.random.default_rng(0)
    copies = {}
    for name, f in {
        "jpeg75": lambda im: decode_image(_enc(im, "JPEG", quality=75)),
        "jpeg50": lambda im: decode_image(_enc(im, "JPEG", quality=50)),
        "upscale2": lambda im: im.resize((56, 56), Image.Resampling.BICUBIC),
        "noise1": lambda im: Image.fromarray(np.clip(np.asarray(im, np.int16) + rng.integers(-1, 2, (28, 28)), 0, 255).astype(np.uint8)),
    }.items():
        d = np.array([bits(h, hash_fn(f(im))) for h, im in zip(hashes, imgs)])
        copies[name] = {f"<={t}": float((d <= t).mean()) for t in range(0, 9)}
    h = np.array([int(x, 16) for x in hashes], dtype=np.uint64)
    x = h[:, None] ^ h[None, :]
    dist = np.unpackbits(x.view(np.uint8).reshape(len(h), len(h), 8), axis=-1).sum(-1)
    iu = np.triu_indices(len(h), 1)
    pairs = dist[iu]
    distinct = {f"<={t}": float((pairs <= t).mean()) for t in range(0, 9)}
    return {"copies_within": copies, "distinct_pairs_within": distinct, "pairs": int(len(pairs))}


def main() -> None:
    held = load_dataset("mnist5k", "heldout")
    imgs = [Image.fromarray(to_uint8(x)) for x in held.images]
    print(json.dumps({"phash": measure(imgs, phash), "dhash": measure(imgs, dhash)}, indent=1))


def _enc(im, fmt, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


if __name__ == "__main__":
    main()
