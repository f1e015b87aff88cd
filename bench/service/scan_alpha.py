"""Which false-positive rate should the scan's "watermarked-ours" verdict use?

At alpha, a scan of N unmarked files calls about alpha * N of them ours. This measures, with the
bundled model and a fresh random key, the share of clean watermarked samples detected and the share
of negatives (held-out real digits and unmarked samples) falsely detected, at several alphas, from
the same p-values (api.scan's path: watermark.verify.verify_images, corrected over the key ring).

    python bench/service/scan_alpha.py --n 200 --n-negative 2000 --out bench/out/scan_alpha.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    from ddpm_guard.generator.checkpoint import load_model
    from ddpm_guard.generator.data import load_dataset
    from ddpm_guard.generator.image_io import quantize
    from ddpm_guard.generator.pipeline import generate
    from ddpm_guard.watermark.marking import generate_marked
    from ddpm_guard.watermark.keys import new_key_file
    from ddpm_guard.watermark.verify import verify_images

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--n-negative", type=int, default=2000)
    ap.add_argument("--alphas", type=float, nargs="+", default=[1e-2, 1e-3, 1e-4, 1e-5])
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    key = new_key_file(Path(tempfile.mkdtemp()) / "k.key")
    model, schedule, _ = load_model()
    wm, _ = generate_marked(model, schedule, key, 0x2A, a.n, seed=5)
    half = a.n_negative // 2
    plain, _ = generate(model, schedule, half, seed=6)
    real = load_dataset("mnist5k", "heldout").images[: a.n_negative - half]

    def pvals(x: torch.Tensor) -> np.ndarray:
        return np.array([v.p_value for v in verify_images(quantize(x), {"k": key}, model, schedule, alpha=0.5)])

    p_pos, p_neg = pvals(wm), pvals(torch.cat([plain, real]))
    report = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "n": a.n, "n_negative": len(p_neg),
              "by_alpha": {f"{al:g}": {"tpr_clean": float((p_pos < al).mean()), "fpr": float((p_neg < al).mean()),
                                       "false_per_10k_files": float((p_neg < al).mean() * 1e4)} for al in a.alphas},
              "median_p_marked": float(np.median(p_pos))}
    print(json.dumps(report, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
