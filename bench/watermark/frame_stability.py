"""How well the decoder's canonical frame (watermark.decoder.canonical_affine) follows a digit through
each attack, on held-out digits, in mean absolute [0, 1] pixel units:
- geometric attacks (rotations, the crop, resize): the canonical image of the attacked digit against
  that of the clean one;
- the others, which leave the geometry alone: the clean digit warped by the frame read from the
  attacked copy against the clean digit in its own frame, so only the frame's error counts.
0 would mean the CNN sees the mark where it was put whatever the attack did to the frame. No
training: a proxy to choose the frame before a decoder is trained on it.

    python bench/watermark/frame_stability.py [--n 500] > bench/results/watermark_frame_stability.json
"""

from __future__ import annotations

import argparse
import json

import torch

from generator.data import load_dataset
from watermark.attacks import ATTACKS
from watermark.decoder import canonical_affine, canonicalise, normalise, warp

GEOMETRIC = ("rotate15", "rotate45", "rotate75", "crop0.75", "resize0.5")

VARIANTS = {"similarity (bundled)": (0.0, 0.0), "smoothed moments": (1.0, 0.0), "affine": (0.0, 1.0),
            "smoothed + half affine": (1.0, 0.5), "smoothed + affine": (1.0, 1.0),
            "no size normalisation": (0.0, 0.0, 0.0), "smoothed, no size normalisation": (1.0, 0.0, 0.0)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    x = load_dataset("mnist5k", "heldout").images[:a.n]
    xn = normalise(x)
    clean = {v: canonicalise(xn, *frame) for v, frame in VARIANTS.items()}  # each frame's reference
    out = {}
    for name, attack in ATTACKS.items():
        if name == "clean":
            continue
        y = attack(x, torch.Generator().manual_seed(a.seed))
        y = torch.round((y + 1) * 127.5) / 127.5 - 1  # saved as 8-bit
        yn, row = normalise(y), {}
        for v, frame in VARIANTS.items():
            if name in GEOMETRIC:
                c1 = canonicalise(yn, *frame)
            else:
                c1 = warp(xn, canonical_affine(yn, *frame))
            row[v] = round(float((c1 - clean[v]).abs().mean() / 2), 4)
        out[name] = row
    out["mean over the six Tree-Ring attacks"] = {
        v: round(sum(out[k][v] for k in ("rotate75", "jpeg25", "crop0.75", "blur1", "noise0.1", "brightness0-6")) / 6, 4)
        for v in VARIANTS}
    print(json.dumps({"n": a.n, "seed": a.seed, "error": out}, indent=1))


if __name__ == "__main__":
    main()
