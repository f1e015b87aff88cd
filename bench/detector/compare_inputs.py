"""Which detector input holds up on a generator family it never saw: raw pixels, the NPR residual, or both?

    python bench/detector/compare_inputs.py --epochs 20 --inputs raw npr both \\
        --fake-generator bundled --fake-generator detector/weights/families/ddpm-b \\
        --fake-generator detector/weights/families/vae --fake-generator detector/weights/families/gan

For each input, leave-one-family-out over the training families only (`detector.train.leave_one_out`):
train without the family, calibrate on the others (clean and edited reals), score the held-out family's
calibration fakes against the calibration reals, clean, tidied and after JPEG q75. The choice is made on
these numbers, never on `detector eval`'s held-out generator (bench/detector/generators/), which no choice
here sees. Writes one JSON line per (input, held-out family).
"""
import argparse
import json
import sys
import time

import torch

from ddpm_guard.detector.model import INPUTS, DetectorConfig
from ddpm_guard.detector.sources import parse_generator
from ddpm_guard.detector.train import FAKE_CACHE, gather, leave_one_out

ap = argparse.ArgumentParser()
ap.add_argument("--epochs", type=int, default=20)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--inputs", nargs="*", default=list(INPUTS))
ap.add_argument("--fake-generator", action="append", required=True)
ap.add_argument("--stay-positive", action="store_true")
ap.add_argument("--background-floor", type=int, default=0)
ap.add_argument("--stats", nargs="*", type=int, default=[0], help="1: fuse the stroke-statistics branch; 0 1: both")
ap.add_argument("--hold-out", nargs="*", default=None, help="only these families (default: each in turn)")
a = ap.parse_args()
families = [parse_generator(g) for g in a.fake_generator]
log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
for inp, stats in [(i, bool(s)) for i in a.inputs for s in a.stats]:
    cfg = DetectorConfig(input=inp, background_floor=a.background_floor, stats=stats)
    real_tr, real_cal, fam_tr, fam_cal, _ = gather(cfg, families, None, a.seed, FAKE_CACHE, log)
    t0 = time.time()
    rep = leave_one_out(cfg, real_tr, real_cal, fam_tr, fam_cal, epochs=a.epochs, seed=a.seed, log=log, stay_positive=a.stay_positive,
                        only=a.hold_out)
    for fam, row in rep.items():
        print(json.dumps({"input": inp, "stats": stats, "stay_positive": a.stay_positive, "background_floor": a.background_floor, "held_out": fam, "epochs": a.epochs, "seed": a.seed,
                          "cpu": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
                          "minutes": (time.time() - t0) / 60, **row}), flush=True)
