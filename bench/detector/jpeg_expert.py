"""Would a JPEG expert close the JPEG gap? Leave-one-family-out (detector.train.leave_one_out) with JPEG q30-95
added to a share of the training images, after the usual augmentation; the choice is read on the held-out
training family, never on ddpm-c.

    python bench/detector/jpeg_expert.py SHARE HELD_OUT_FAMILY [EPOCHS]   # e.g. 1.0 ddpm-bundled 15
"""
import json
import sys
import time

import torch

import detector.data as D
import detector.train as T
from detector.model import DetectorConfig
from detector.sources import parse_generator

JP = float(sys.argv[1]); held = sys.argv[2]; epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 15
orig = D.augment
def aug(x, gen, p=0.5):
    y = orig(x, gen, p)  # the usual edits (JPEG at p)
    q = torch.randint(30, 96, (len(y),), generator=gen).tolist()
    m = torch.rand(len(y), generator=gen) < JP
    if m.any():
        y = y.clone(); y[m] = D.jpeg(y[m], [q[i] for i in m.nonzero().flatten().tolist()])
    return D.quantize(y)
T.augment = aug
fams = [parse_generator(g) for g in ["bundled", "detector/weights/families/ddpm-b", "detector/weights/families/vae", "detector/weights/families/gan"]]
cfg = DetectorConfig(input="raw", background_floor=32, stats=True)
real_tr, real_cal, fam_tr, fam_cal, _ = T.gather(cfg, fams, None, 0, T.FAKE_CACHE)
t0 = time.time()
rep = T.leave_one_out(cfg, real_tr, real_cal, fam_tr, fam_cal, epochs=epochs, seed=0, only=[held])
print(json.dumps({"jpeg_extra_p": JP, "held": held, "epochs": epochs, "rep": rep, "s": time.time() - t0}))
