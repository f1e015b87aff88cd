"""Train, calibrate and save the detector.

    ddpm-guard detector train --out detector/weights/default --seed 0

reproduces the bundled detector (the fake sets are cached under runs/detector/fakes, so a rerun or an
evaluation reuses them). Steps:
1. real digits: detector-train (3,200) and calibration (800) splits of the 4,000 training digits;
   fakes: N_TRAIN_FAKES per training source, the first 80% train, the rest calibrate;
2. train the timm network with BCE on identically augmented real and fake batches;
3. on the calibration split: Platt scaling, the threshold at 1% FPR, and (optionally) the DIRE
   zero-shot score and its logistic-regression fusion with the classifier, with its own threshold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from generator.checkpoint import default_device, load_model
from generator.train import fit_supervised
from detector.calibrate import Fusion, Platt, threshold_at_fpr
from detector.data import N_TRAIN_FAKES, TRAIN_SOURCES, augment, fake_sets, real_split
from detector.model import DetectorConfig, DetectorNet
from detector.predict import Detector

FAKE_CACHE = Path("runs/detector/fakes")
TARGET_FPR = 0.01  # the decision threshold flags this fraction of calibration reals
AUG_P = 0.3  # probability of each augmentation (JPEG, blur, resize, shift) per image, for both classes


def train_net(cfg: DetectorConfig, real: torch.Tensor, fake: torch.Tensor, *, epochs: int = 12, batch_size: int = 128,
              lr: float = 2e-3, aug_p: float = AUG_P, seed: int = 0, device: torch.device | None = None,
              log=None) -> DetectorNet:
    """BCE on real (0) vs fake (1), the rarer class up-weighted; both go through the same `augment`."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    device = device or default_device()
    net = DetectorNet(cfg).to(device)
    x = torch.cat([real, fake])
    y = torch.cat([torch.zeros(len(real)), torch.ones(len(fake))])
    pos_weight = torch.tensor(len(real) / max(1, len(fake)), device=device)
    loss_fn = lambda logits, target: F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)  # noqa: E731
    return fit_supervised(net, x, y, loss_fn, augment=lambda xb, g: augment(xb, g, aug_p), gen=gen, epochs=epochs,
                          batch_size=batch_size, lr=lr, device=device, log=log)


def split_fakes(fakes: dict[str, torch.Tensor], frac: float = 0.8) -> tuple[torch.Tensor, torch.Tensor]:
    """Per source, the first `frac` train and the rest calibrate."""
    k = {name: int(round(len(x) * frac)) for name, x in fakes.items()}
    return (torch.cat([x[:k[n]] for n, x in fakes.items()]), torch.cat([x[k[n]:] for n, x in fakes.items()]))


def calibrate(net: DetectorNet, real: torch.Tensor, fake: torch.Tensor, *, zero_shot: bool, generator=None,
              log=None) -> Detector:
    """Platt scaling and the 1%-FPR threshold on the calibration split; the DIRE fusion if asked."""
    det = Detector(net, Platt(1.0, 0.0), 0.5)
    y = np.r_[np.zeros(len(real)), np.ones(len(fake))]
    logit = det.logits(torch.cat([real, fake]))
    platt = Platt.fit(logit, y)
    threshold = threshold_at_fpr(platt(logit[y == 0]), TARGET_FPR)
    fusion = fusion_threshold = None
    if zero_shot:
        from detector.zeroshot import dire_scores

        model, schedule = generator
        if log:
            log(f"zero-shot DIRE scores on {len(y)} calibration images")
        dire = dire_scores(model, schedule, torch.cat([real, fake]))
        feats = {"classifier_logit": logit, "dire": dire}
        fusion = Fusion.fit(feats, y)
        fusion_threshold = threshold_at_fpr(fusion(feats)[y == 0], TARGET_FPR)
    return Detector(net, platt, threshold, fusion, fusion_threshold)


def fit_detector(cfg: DetectorConfig = DetectorConfig(), *, epochs: int = 40, seed: int = 0, zero_shot: bool = True,
                 generator_checkpoint: str | None = None, cache: Path | None = FAKE_CACHE, log=None) -> Detector:
    model, schedule, _ = load_model(generator_checkpoint)
    real_tr, real_cal = real_split("train"), real_split("calib")
    fakes = fake_sets(model, schedule, TRAIN_SOURCES, N_TRAIN_FAKES, 1000 + seed, real_tr, cache, log)
    fake_tr, fake_cal = split_fakes(fakes)
    if log:
        log(f"training on {len(real_tr)} real + {len(fake_tr)} fake; calibrating on {len(real_cal)} + {len(fake_cal)}")
    net = train_net(cfg, real_tr, fake_tr, epochs=epochs, seed=seed, log=log)
    det = calibrate(net, real_cal, fake_cal, zero_shot=zero_shot, generator=(model, schedule), log=log)
    det.meta = {"generator": generator_checkpoint,
                "train": {"command": f"ddpm-guard detector train --input {cfg.input} --epochs {epochs} --seed {seed}",
                          "real": "mnist5k train, first 320 per digit", "calibration": "mnist5k train, last 80 per digit",
                          "fake_sources": [s.name for s in TRAIN_SOURCES], "fakes_per_source": N_TRAIN_FAKES,
                          "epochs": epochs, "seed": seed, "target_fpr": TARGET_FPR}}
    return det
