"""Nonce streams: detection power against sample diversity (FID), for the weighted statistic.

    python bench/watermark/nonce_tradeoff.py [--nonce-bits 4 8] [--n 100] [--fid-n 200] [--fid-seeds 100 101]

Per nonce count: TPR at alpha 1 % and at an empirical 1 % FPR on n watermarked samples (fixed bench
key, DDIM-50, guidance 1.5, 10-step inversion; negatives: the held-out real digits, inverted once
and cached by compare_statistics.py), and the FID of fid-n watermarked samples per seed. Plain
samples' FID for the same seeds comes from `fid_change` (it does not depend on the scheme).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ddpm_guard.generator.checkpoint import load_model
from ddpm_guard.generator.classifier import load_classifier, predict
from ddpm_guard.generator.data import load_dataset
from ddpm_guard.generator.image_io import quantize
from ddpm_guard.generator.metrics import fid
from ddpm_guard.generator.samplers import ddim_invert
from ddpm_guard.watermark.latent.read import read_latent
from ddpm_guard.watermark.pvalues import sidak
from ddpm_guard.watermark.latent.codec import Codec, Scheme
from ddpm_guard.watermark.marking import MarkSpec, generate_marked
from ddpm_guard.watermark.evaluate import tpr_at_fpr

from compare_statistics import PAYLOAD, bench_key, latents  # same folder: the shared bench key and latent cache


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nonce-bits", type=int, nargs="*", default=[4, 8])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--fid-n", type=int, default=200)
    ap.add_argument("--fid-seeds", type=int, nargs="*", default=[100, 101])
    ap.add_argument("--cache", default="runs/wm_stats")
    a = ap.parse_args()
    model, sched, _ = load_model()
    key = bench_key()
    held = load_dataset("mnist5k", "heldout").images
    neg = latents("neg_1000", held, model, sched, Path(a.cache))
    net = load_classifier()
    ref = predict(net, held)[0].numpy()
    for nb in a.nonce_bits:
        scheme = Scheme(nonce_bits=nb)
        codec = Codec(key, (1, 28, 28), scheme)
        wm = quantize(generate_marked(model, sched, key, PAYLOAD, a.n, MarkSpec(latent=scheme), seed=0)[0])
        lat = ddim_invert(model, sched, wm, 10)
        m = scheme.num_nonces
        p = np.array([sidak(r.p_value, m) for r in read_latent(codec, lat)])
        pn = np.array([sidak(r.p_value, m) for r in read_latent(codec, neg)])
        row = {"nonce_bits": nb, "streams": m, "tpr_at_alpha": float((p < 0.01).mean()),
               "tpr_at_1pct_empirical": tpr_at_fpr(-np.log10(pn), -np.log10(p)), "fpr_at_alpha": float((pn < 0.01).mean()),
               "fid_watermarked": {}}
        for s in a.fid_seeds:
            x = quantize(generate_marked(model, sched, key, PAYLOAD, a.fid_n, MarkSpec(latent=scheme), seed=s)[0])
            row["fid_watermarked"][s] = fid(predict(net, x)[0].numpy(), ref)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
