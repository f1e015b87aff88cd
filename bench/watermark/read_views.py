"""Re-synchronisation at read time: the decoder reads each file under a few fixed inverse views (the file
itself, a horizontal or vertical squeeze that undoes a crop's stretch, a median filter that undoes noise),
and the zero-bit test keeps the best view, Sidak-corrected for the number of views (Kutter 1998's
exhaustive search; Lichtenauer et al. 2003 on its false-positive price). No retraining: the marks are
the guided marks as `sample --guided-mark` makes them.

    python bench/watermark/read_views.py make --key-seed 1 --n 100 --out runs/views/dev.safetensors
    python bench/watermark/read_views.py read runs/views/dev.safetensors --views id,sx,sy --weights 0.8,0.1,0.1
    python bench/watermark/read_views.py read runs/views/dev.safetensors --views id,sx,sy,unbright \
        --weights 0.7,0.1,0.1,0.1 --soft 1.5 --decoder READER_DIR     # the soft test, a reader's network

The views and weights that ship are in the bundled decoder's record (watermark.decoder.READ_VIEWS); this bench
applies its own views to the plain decoder, so it can measure ones that do not ship (median, blur, floor).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def make(a) -> None:
    from safetensors.torch import save_file

    from ddpm_guard.generator.checkpoint import load_model
    from ddpm_guard.generator.data import load_dataset
    from ddpm_guard.generator.image_io import quantize
    from ddpm_guard.generator.pipeline import generate
    from ddpm_guard.watermark.marking import MarkSpec, generate_marked
    from ddpm_guard.watermark.guided.scheme import GuidedScheme
    from ddpm_guard.watermark.keys import WatermarkKey

    key = WatermarkKey(bytes([a.key_seed]) * 32)
    model, schedule, _ = load_model(None)
    kw = dict(steps=50, precision="auto")
    scheme = GuidedScheme()
    marked, _ = generate_marked(model, schedule, key, a.payload, a.n, MarkSpec(guided=scheme), seed=a.seed, **kw)
    others_keys = [WatermarkKey(key.stream(f"eval/other-key/{i}", 32)) for i in range(max(1, a.n // 5))]
    per = -(-a.n // len(others_keys))
    others = torch.cat([generate_marked(model, schedule, k, a.payload, per, MarkSpec(guided=scheme), seed=a.seed + 1 + i, **kw)[0] for i, k in enumerate(others_keys)])[:a.n]
    unmarked = generate(model, schedule, a.n_unmarked, seed=a.seed + 2, **kw)[0]
    cal_fake = generate(model, schedule, a.n_cal, seed=1000, **kw)[0]
    sets = {"marked": marked, "other_key": others, "unmarked": unmarked, "cal_fake": cal_fake,
            "real": load_dataset("mnist5k", "heldout").images, "cal_real": load_dataset("mnist5k", "train").images}
    save_file({k: quantize(v).contiguous() for k, v in sets.items()}, a.out,
              metadata={"key_seed": str(a.key_seed), "payload": str(a.payload)})


def view_fns():
    """The views that ship (watermark.decoder.READ_VIEWS) and ones measured and not shipped."""
    from ddpm_guard.generator.perturb import gaussian_blur, median_filter
    from ddpm_guard.watermark.guided.nets import _squeeze, _unbright, READ_VIEWS

    def floor(x):  # the dark levels (below 77) set to black
        return torch.where(x < -0.4, -torch.ones_like(x), x)

    return {**READ_VIEWS, "med3": lambda x: median_filter(x, 3), "med5": lambda x: median_filter(x, 5),
            "blur07": lambda x: gaussian_blur(x, 0.7), "blur1": lambda x: gaussian_blur(x, 1.0),
            "sx_med3": lambda x: median_filter(_squeeze(x, 0.75, 1.0), 3), "floor": floor,
            "med_floor": lambda x: floor(median_filter(x, 3)), "unbright2.5": lambda x: _unbright(x, 2.5)}


def _crop(scale, ratio):
    from ddpm_guard.generator.perturb import random_resized_crop
    return lambda x, g: random_resized_crop(x, g, scale, ratio)


# crops the views were not built for (other shapes than Tree-Ring's 3:4 window): a check on generality
EXTRA = {"crop0.75v": _crop(0.75, 4 / 3), "crop0.75sq": _crop(0.75, 1.0), "crop0.6": _crop(0.6, 0.75),
         "crop0.9": _crop(0.9, 0.75), "crop0.75r0.67": _crop(0.75, 2 / 3)}


@torch.inference_mode()
def read(a) -> None:
    from safetensors.torch import load_file, safe_open

    from ddpm_guard.generator.image_io import quantize
    from ddpm_guard.watermark.attacks import ATTACKS, TREE_RING_SIX
    from ddpm_guard.watermark.attacks import attack_layer
    from ddpm_guard.watermark.guided.nets import load_decoder
    from ddpm_guard.watermark.evaluate import HELD_OUT_ATTACKS, _held_out_attack, payload_bit_accuracies
    from ddpm_guard.watermark.guided.scheme import GuidedScheme
    from ddpm_guard.watermark.guided.statistic import Calibration, read_logits, SOFT_CLIP
    from ddpm_guard.watermark.keys import WatermarkKey

    sets = load_file(a.sets)
    with safe_open(a.sets, "pt") as f:
        meta = f.metadata()
    key, payload = WatermarkKey(bytes([int(meta["key_seed"])]) * 32), int(meta["payload"])
    dec = load_decoder(a.decoder)[0].embed  # the network itself (its calibration unused); this bench applies the views
    fns = view_fns()
    views = a.views.split(",")

    def logits(x):
        return torch.cat([torch.cat([dec(fns[v](x[i:i + 512])) for v in views], 1) for i in range(0, len(x), 512)])

    # calibration per view on the calibration negatives (training digits + unmarked samples, clean and attacked),
    # as watermark.guided.calibrate does for one view
    xc = torch.cat([sets["cal_real"], sets["cal_fake"]])
    g = torch.Generator().manual_seed(1000)
    lc = torch.cat([logits(xc), logits(attack_layer(xc, g, identity_share=0.0))])
    weights = tuple(float(w) for w in a.weights.split(",")) if a.weights else None
    cal = Calibration.fit(lc, weights, len(views), soft_clip=a.soft or SOFT_CLIP)
    # the sign test (Sidak over views, or the weights if given), or the soft statistic with this clip
    scheme = GuidedScheme(statistic="soft" if a.soft else "sign-max" if len(views) > 1 else "sign")
    g = torch.Generator().manual_seed(3)
    rows, neg_all, t_dec, n_dec = {}, {k: [] for k in ("real", "unmarked", "other_key")}, 0.0, 0
    attacks = a.attacks.split(",") if a.attacks else list(ATTACKS) + list(HELD_OUT_ATTACKS)
    for name in attacks:
        att = ATTACKS.get(name) or EXTRA.get(name) or (lambda x, gg, _n=name: _held_out_attack(_n, x, gg))
        r = {}
        for k in ("marked", "real", "unmarked", "other_key"):
            x = quantize(att(sets[k], g))
            t0 = time.time()
            lg = logits(x)
            t_dec += time.time() - t0
            n_dec += len(x)
            r[k] = read_logits(lg, cal, key, scheme)
        p = {k: np.array([q.p_value for q in v]) for k, v in r.items()}
        for k in neg_all:
            neg_all[k].append(p[k])
        rows[name] = {"tpr": float((p["marked"] < a.alpha).mean()),
                      "bit_acc": float(np.mean(payload_bit_accuracies([q.decoded_payload for q in r["marked"]], payload))),
                      "fpr": {k: float((p[k] < a.alpha).mean()) for k in neg_all}}
        print(name, json.dumps(rows[name]), flush=True)
    head = [n for n in TREE_RING_SIX + ("clean",) if n in rows]
    out = {"views": views, "weights": weights, "decoder": a.decoder, "rows": rows,
           "mean7": float(np.mean([rows[n]["tpr"] for n in head])),
           "mean7_bit_acc": float(np.mean([rows[n]["bit_acc"] for n in head])),
           "fpr_all": {k: float((np.concatenate(v) < a.alpha).mean()) for k, v in neg_all.items()},
           "n_neg": int(sum(len(np.concatenate(v)) for v in neg_all.values())),
           "images_per_s": n_dec / t_dec, "threads": torch.get_num_threads(),
           "cpu": torch.backends.cpu.get_cpu_capability()}
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--key-seed", type=int, default=1)
    m.add_argument("--n", type=int, default=100)
    m.add_argument("--n-unmarked", type=int, default=200)
    m.add_argument("--n-cal", type=int, default=500)
    m.add_argument("--payload", type=int, default=0xC0FFEE42)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--out", required=True)
    r = sub.add_parser("read")
    r.add_argument("sets")
    r.add_argument("--views", default="id")
    r.add_argument("--decoder", default=None)
    r.add_argument("--attacks", default=None)
    r.add_argument("--alpha", type=float, default=0.01)
    r.add_argument("--weights", default=None, help="each view's share of alpha (weighted Bonferroni); default Sidak")
    r.add_argument("--soft", type=float, default=None, metavar="CLIP",
                   help="the soft statistic (watermark.guided.soft_chips) with this clip instead of the sign test")
    r.add_argument("--out", default=None)
    a = ap.parse_args()
    make(a) if a.cmd == "make" else read(a)


if __name__ == "__main__":
    main()
