"""Watermark v2 (issue 10): `watermark.evaluate.evaluate_guided` with the scheme's knobs exposed, for
the design sweep and the headline table in BENCHMARKS.md.

    python bench/watermark/guided_eval.py --n 500 --key-seed 2 --fid-seeds 2 --out bench/results/watermark_v2.json

The key is derived from --key-seed (1 = the development key the scheme was tuned on; report on others).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

from ddpm_guard.generator.checkpoint import load_model
from ddpm_guard.api.cli.weights import add_config_arguments  # one --field option per dataclass field
from ddpm_guard.watermark.evaluate import evaluate_guided
from ddpm_guard.watermark.guided.scheme import GuidedScheme
from ddpm_guard.watermark.keys import WatermarkKey


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--n-negative", type=int, default=2000)
    ap.add_argument("--decoder", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--key-seed", type=int, default=1)
    ap.add_argument("--attacks", default=None, help="comma-separated (default: the suite and the held-out edits)")
    ap.add_argument("--fid-seeds", type=int, default=0)
    ap.add_argument("--psnr-n", type=int, default=100)
    ap.add_argument("--other-keys", type=int, default=None,
                    help="how many keys the other-key marks come from (default --n: one mark per key)")
    ap.add_argument("--out", default=None)
    add_config_arguments(ap, GuidedScheme)
    a = ap.parse_args()
    scheme = GuidedScheme(**{f.name: getattr(a, f.name) for f in fields(GuidedScheme)})
    key = WatermarkKey(bytes([a.key_seed]) * 32)
    model, schedule, _ = load_model(None)
    kw = {"attacks": tuple(a.attacks.split(","))} if a.attacks else {}
    report = evaluate_guided(model, schedule, key, n=a.n, n_negative=a.n_negative, seed=a.seed, fid_seeds=a.fid_seeds,
                             psnr_n=a.psnr_n, decoder=a.decoder, scheme=scheme, other_keys=a.other_keys, log=lambda s: print(s, flush=True), **kw)
    print(json.dumps({k: v for k, v in report.items() if k != "attacks"}, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
