"""Train, calibrate and save the detector, with a leave-one-family-out report.

    ddpm-guard detector train --out detector/weights/default --seed 0 \\
        --fake-generator bundled --fake-generator detector/weights/families/ddpm-b \\
        --fake-generator detector/weights/families/vae --fake-generator detector/weights/families/gan

reproduces the bundled detector (fakes are cached under runs/detector/fakes, so a rerun reuses them).
1. Reals (`--real`, default mnist5k): a train and a calibration split. Fakes: one *family* per
   `--fake-generator` / `--fake`; each family's sources split 80/20 the same way.
2. Training: balanced batches, half real and half fake, the fakes drawn evenly from the families (so a
   family with more sampler settings does not dominate), every image through the same `augment`.
3. Calibration on what users upload: Platt scaling on calibration reals and fakes, clean and under the
   benign edits of `perturb_for_calibration`; the threshold is the highest of the per-edit 1%-FPR
   thresholds of the reals, so no benign edit alone pushes real digits over it.
4. The out-of-domain score (detector.domain) on the same splits.
5. Leave-one-family-out: for each family, the same training without it, scored on its calibration
   fakes against the calibration reals, clean, tidied, and JPEG q75. That is the honest estimate for a
   generator the detector never saw.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ddpm_guard.generator.checkpoint import default_device
from ddpm_guard.detector.calibrate import EditRouter, Fusion, Platt, threshold_at_fpr
from ddpm_guard.detector.data import CALIBRATION_PERTURBATIONS, augment, perturb_for_calibration
from ddpm_guard.detector.domain import DomainScore
from ddpm_guard.detector.experts import EditExpert, expert_features
from ddpm_guard.detector.model import DetectorConfig, DetectorNet
from ddpm_guard.detector.predict import Detector
from ddpm_guard.detector.sources import Family, check_shape, family_fakes, real_images, split_sources

FAKE_CACHE = Path("runs/detector/fakes")
TARGET_FPR = 0.01  # the decision threshold flags at most this fraction of calibration reals, per benign edit
AUG_P = 0.5  # probability of each augmentation per image, for both classes (JPEG q30-100 at 0.5, as Rajan et al.)
N_TRAIN_FAKES = 300  # per source of a generator family


def train_net(cfg: DetectorConfig, real: torch.Tensor, fakes: torch.Tensor | dict[str, torch.Tensor], *,
              epochs: int = 100, batch_size: int = 128, lr: float = 2e-3, aug_p: float = AUG_P, seed: int = 0,
              stay_positive: bool = False, device: torch.device | None = None, log=None) -> DetectorNet:
    """BCE on balanced batches: half reals, half fakes drawn evenly over the families; one epoch is one pass
    over the reals. Both halves go through the same `augment` in one call.

    stay_positive (Rajan & Lee, ICML 2025): the last layer's weights are clamped to >= 0 after every step, so
    the (non-negative, post-ReLU) features can only add evidence of "synthetic"; a feature that means "real"
    cannot cancel a generator trace, which is what lets a fake pass when its artefacts are partly hidden."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    device = device or default_device()
    fams = list(fakes.values()) if isinstance(fakes, dict) else [fakes]
    half = batch_size // 2
    steps_per_epoch = math.ceil(len(real) / half)
    net = DetectorNet(cfg).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    y = torch.cat([torch.zeros(half), torch.ones(half)]).to(device)
    net.train()
    for ep in range(epochs):
        total, t0 = 0.0, time.time()
        for _ in range(steps_per_epoch):
            r = real[torch.randint(0, len(real), (half,), generator=gen)]
            which = torch.randint(0, len(fams), (half,), generator=gen)
            f = torch.stack([fams[k][torch.randint(0, len(fams[k]), (1,), generator=gen)][0] for k in which.tolist()])
            x = augment(torch.cat([r, f]), gen, aug_p)
            loss = F.binary_cross_entropy_with_logits(net(x.to(device)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if stay_positive:
                with torch.no_grad():
                    net.net.fc.weight.clamp_(min=0)
            total += loss.item()
        if log:
            log(f"epoch {ep + 1}/{epochs} loss {total / steps_per_epoch:.4f} ({time.time() - t0:.0f} s)")
    return net.eval()


def calibrate(net: DetectorNet, real: torch.Tensor, fake: torch.Tensor, *, zero_shot: bool = False, generator=None,
              perturbations: tuple[str, ...] = CALIBRATION_PERTURBATIONS, route: bool = True, seed: int = 0,
              expert_train: dict[str, tuple[np.ndarray, np.ndarray]] | None = None, log=None) -> Detector:
    """Platt scaling on calibration reals and fakes under every perturbation; the single threshold is the largest
    per-perturbation 1%-FPR threshold of the reals; with `route`, the edit router (EditRouter) and its per-route
    thresholds on the same images; with `expert_train` ({edit: expert features of training reals, of training
    fakes} under that edit, `expert_training_set`) the edit expert (detector.experts), fitted on those and Platt-scaled
    here, whose probabilities the edit routes' thresholds are then set on; the DIRE fusion (clean images) if asked."""
    det = Detector(net, Platt(1.0, 0.0), 0.5)
    g = torch.Generator().manual_seed(seed)
    parts_r = {k: det.forward(perturb_for_calibration(real, k, g), with_stats=True) for k in perturbations}
    parts_f = {k: det.forward(perturb_for_calibration(fake, k, g), with_stats=True) for k in perturbations}
    logit_r, logit_f = {k: v[0] for k, v in parts_r.items()}, {k: v[0] for k, v in parts_f.items()}
    y = np.r_[np.zeros(sum(map(len, logit_r.values()))), np.ones(sum(map(len, logit_f.values())))]
    platt = Platt.fit(np.r_[np.concatenate(list(logit_r.values())), np.concatenate(list(logit_f.values()))], y)
    per_edit = {k: threshold_at_fpr(platt(v), TARGET_FPR) for k, v in logit_r.items()}
    threshold = max(per_edit.values())
    router = expert = None
    # an edit whose statistics equal another's (tidy after the background floor is clean) adds nothing to route on
    edits = [k for k in perturbations if not (k == "tidy" and net.config.background_floor)]
    if route and len(edits) > 1:  # one edit: nothing to route between, the single threshold is its threshold
        p_real, p_fake = {k: platt(logit_r[k]) for k in edits}, {k: platt(logit_f[k]) for k in edits}
        if expert_train:
            if log:
                log("edit expert for: " + ", ".join(k for k in edits if k in expert_train))
            feats_r = {k: expert_features(parts_r[k][3], parts_r[k][2]) for k in edits}
            feats_f = {k: expert_features(parts_f[k][3], parts_f[k][2]) for k in edits}
            expert = EditExpert.fit({k: v for k, v in expert_train.items() if k in edits},
                                    {k: (feats_r[k], feats_f[k]) for k in expert_train if k in edits}, seed)

            def per_route(feats, p):  # column i: what route i would give each image (the expert, or the network)
                return {k: np.stack([pe if e in expert.edits else p[k] for e in edits], 1)
                        for k in edits for pe in [expert.prob(feats[k])]}
            p_real, p_fake = per_route(feats_r, p_real), per_route(feats_f, p_fake)
        router = EditRouter.fit({k: (parts_r[k][3], parts_f[k][3]) for k in edits}, p_real, threshold, TARGET_FPR,
                                p_fake)
    fusion = fusion_threshold = None
    if zero_shot:
        from ddpm_guard.detector.zeroshot import dire_scores

        model, schedule = generator
        if log:
            log(f"zero-shot DIRE scores on {len(real) + len(fake)} calibration images")
        dire = dire_scores(model, schedule, torch.cat([real, fake]))
        feats = {"classifier_logit": np.r_[logit_r["clean"], logit_f["clean"]] if "clean" in logit_r
                 else det.logits(torch.cat([real, fake])), "dire": dire}
        yc = np.r_[np.zeros(len(real)), np.ones(len(fake))]
        fusion = Fusion.fit(feats, yc)
        fusion_threshold = threshold_at_fpr(fusion(feats)[yc == 0], TARGET_FPR)
    out = Detector(net, platt, threshold, fusion, fusion_threshold, router=router, expert=expert)

    def judged(parts) -> float:  # the share called synthetic, each image at its own threshold
        p, thr, _ = out.decide(parts[0], parts[3], parts[2])
        return float((p > thr).mean())

    out.meta["calibration_fpr"] = {k: judged(v) for k, v in parts_r.items()}
    out.meta["calibration_tpr"] = {k: judged(v) for k, v in parts_f.items()}
    return out


EXPERT_EDITS = ("jpeg", "blur", "resize", "noise")  # the routes that get an edit expert; clean stays with the network


def expert_training_set(det: Detector, real: torch.Tensor, fake: torch.Tensor, seed: int = 0,
                        edits: tuple[str, ...] = EXPERT_EDITS, draws: int = 2) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{edit: (expert features of the training reals, of the training fakes)} under that benign edit, drawn as for
    calibration: 2 * draws of each real, `draws` of each fake (measured: 2 gives about 0.01 AUC over 1). What the
    edit expert trains on."""
    g = torch.Generator().manual_seed(seed + 2)

    def features(x):
        _, _, fitted, stats = det.forward(x, with_stats=True)
        return expert_features(stats, fitted)

    return {k: (np.concatenate([features(perturb_for_calibration(real, k, g)) for _ in range(2 * draws)]),
                np.concatenate([features(perturb_for_calibration(fake, k, g)) for _ in range(draws)])) for k in edits}


def recalibrate(det: Detector, *, families: list[Family], reals: list[str] | None = None, seed: int = 0,
                route: bool = True, experts: bool = True, cache: Path | None = FAKE_CACHE, log=None) -> Detector:
    """The calibration step of `fit_detector` again, on a trained detector and the same sources and seed: Platt,
    the single threshold, the edit router and the edit expert refitted on the same splits (the same families in
    the same order give the same Platt and single threshold), and the out-of-domain score refitted on the same
    splits. The network, the zero-shot fusion and the training record are kept; the families (and their sampler
    settings) this calibration used are recorded as `calibration_families`, beside the network's `train.families`."""
    real_tr, real_cal, fam_tr, fam_cal, sources = gather(det.config, families, reals, seed, cache, log)
    cal = fit_calibration(det.net, real_tr, torch.cat(list(fam_tr.values())), real_cal, torch.cat(list(fam_cal.values())),
                          seed=seed, route=route, experts=experts, log=log)
    return Detector(det.net, cal.platt, cal.threshold, det.fusion, det.fusion_threshold,
                    {**det.meta, **cal.meta, "calibration_families": sources}, cal.domain_score, cal.router, cal.expert)


def fit_calibration(net: DetectorNet, real_tr: torch.Tensor, fake_tr: torch.Tensor, real_cal: torch.Tensor,
                    fake_cal: torch.Tensor, *, seed: int = 0, route: bool = True, experts: bool = True,
                    zero_shot: bool = False, generator=None, log=None) -> Detector:
    """Everything fitted after the network, for `detector train` and `detector calibrate` alike: the edit expert on
    the training split (a network with the statistics branch, routed), then `calibrate` on the calibration split,
    then the out-of-domain score (fit_domain)."""
    expert_train = None
    if experts and route and net.config.stats:
        expert_train = expert_training_set(Detector(net, Platt(1.0, 0.0), 0.5), real_tr, fake_tr, seed)
    det = calibrate(net, real_cal, fake_cal, zero_shot=zero_shot, generator=generator, route=route, seed=seed,
                    expert_train=expert_train, log=log)
    det.domain_score = fit_domain(det, real_tr, fake_tr, real_cal, fake_cal, seed)
    return det


def fit_domain(det: Detector, real_tr: torch.Tensor, fake_tr: torch.Tensor, real_cal: torch.Tensor,
               fake_cal: torch.Tensor, seed: int = 0) -> DomainScore:
    """The out-of-domain score: statistics of the training images, thresholds on the calibration images
    (reals clean and under every benign edit, and fakes: generated digits are in domain)."""
    g = torch.Generator().manual_seed(seed + 1)
    cal = torch.cat([perturb_for_calibration(real_cal, k, g) for k in CALIBRATION_PERTURBATIONS] + [fake_cal])
    _, f_tr, x_tr, _ = det.forward(torch.cat([real_tr, fake_tr]))
    _, f_cal, x_cal, s_cal = det.forward(cal, with_stats=True)
    s_tr = None
    if det.config.stats:  # the statistics' component, fitted on the training digits under every benign edit:
        # the edits move the statistics far more than the pooled features, and an edited digit is in domain
        tr = torch.cat([real_tr, fake_tr])
        s_tr = np.concatenate([det.forward(perturb_for_calibration(tr, k, g), with_stats=True)[3]
                               for k in CALIBRATION_PERTURBATIONS])
    return DomainScore.fit(x_tr, f_tr, x_cal, f_cal, s_tr, s_cal if det.config.stats else None)


def leave_one_out(cfg: DetectorConfig, real_tr, real_cal, fam_tr: dict, fam_cal: dict, *, epochs: int, seed: int,
                  aug_p: float = AUG_P, stay_positive: bool = False, log=None, only: list[str] | None = None) -> dict:
    """For each family: train without it, calibrate on the others, score it (never seen) against the reals."""
    from ddpm_guard.detector.evaluate import edit_pair, metrics

    report = {}
    for held in only or list(fam_tr):
        if log:
            log(f"leave-one-out: holding out {held}")
        others = {k: v for k, v in fam_tr.items() if k != held}
        net = train_net(cfg, real_tr, others, epochs=epochs, seed=seed, aug_p=aug_p, stay_positive=stay_positive)
        det = calibrate(net, real_cal, torch.cat([v for k, v in fam_cal.items() if k != held]), seed=seed)
        row = {}
        for name in ("clean", "tidy", "jpeg75"):
            r, f = edit_pair(name, real_cal, fam_cal[held], torch.Generator().manual_seed(seed))
            sr, sf = det.score(r), det.score(f)
            m = metrics(sr["p_synthetic"], sf["p_synthetic"], (sr["threshold"], sf["threshold"]))
            row[name] = {k: m[k] for k in ("auc", "tpr_at_1pct_fpr", "tpr_at_threshold", "fpr_at_threshold")}
        report[held] = row
        if log:
            log(f"  {held}: " + ", ".join(f"{k} AUC {v['auc']:.3f}" for k, v in row.items()))
    return report


def gather(cfg: DetectorConfig, families: list[Family], reals: list[str] | None, seed: int, cache: Path | None,
           log=None) -> tuple:
    """(real train, real calibration, {family: train fakes}, {family: calibration fakes}, {family: description})."""
    if not families:
        raise ValueError("at least one fake family is needed")
    shape = (cfg.in_chans, cfg.image_size, cfg.image_size)
    for fam in families:
        check_shape(fam, shape)
    real_tr, real_cal = real_images(reals or [], "train", shape), real_images(reals or [], "calib", shape)
    fam_tr, fam_cal, sources = {}, {}, {}
    for fam in families:
        fakes = family_fakes(fam, N_TRAIN_FAKES, 1000 + seed, real_tr, cache, log)
        sources[fam.name] = {"kind": fam.kind, "path": fam.path, "sources": list(fakes)}
        fam_tr[fam.name], fam_cal[fam.name] = split_sources(fakes, "train"), split_sources(fakes, "calib")
    return real_tr, real_cal, fam_tr, fam_cal, sources


def fit_detector(cfg: DetectorConfig = DetectorConfig(), *, families: list[Family], reals: list[str] | None = None,
                 epochs: int = 100, seed: int = 0, aug_p: float = AUG_P, stay_positive: bool = False,
                 zero_shot: bool = False, loo: bool = True, experts: bool = True,
                 loo_epochs: int | None = None, cache: Path | None = FAKE_CACHE, log=None) -> Detector:
    real_tr, real_cal, fam_tr, fam_cal, sources = gather(cfg, families, reals, seed, cache, log)
    if log:
        log(f"training on {len(real_tr)} real + " + ", ".join(f"{k} {len(v)}" for k, v in fam_tr.items())
            + f"; calibrating on {len(real_cal)} real + {sum(map(len, fam_cal.values()))} fake")
    net = train_net(cfg, real_tr, fam_tr, epochs=epochs, seed=seed, aug_p=aug_p, stay_positive=stay_positive, log=log)
    generator = None
    if zero_shot:
        from ddpm_guard.generator.checkpoint import load_model

        generator = load_model(None)[:2]
    det = fit_calibration(net, real_tr, torch.cat(list(fam_tr.values())), real_cal, torch.cat(list(fam_cal.values())),
                          seed=seed, experts=experts, zero_shot=zero_shot, generator=generator, log=log)
    cmd = " ".join(["ddpm-guard detector train", f"--input {cfg.input}", f"--background-floor {cfg.background_floor}"]
                   + ([] if cfg.stats else ["--no-stats"]) + ([] if experts else ["--no-experts"]) + [
                    f"--epochs {epochs}", f"--augment-p {aug_p}", f"--seed {seed}"]
                   + (["--stay-positive"] if stay_positive else [])
                   + [f"--real {r}" for r in reals or []]
                   + [f"--fake-generator {f.path or 'bundled'}" if f.kind != "folder" else f"--fake folder:{f.path}"
                      for f in families])
    det.meta.update({"generator": None, "train": {
        "command": cmd, "real": reals or ["mnist5k (train: first 320 per digit; calibration: last 80)"],
        "families": sources, "fakes_per_source": N_TRAIN_FAKES, "epochs": epochs, "seed": seed,
        "target_fpr": TARGET_FPR, "augment_p": aug_p, "stay_positive": stay_positive, "calibration_perturbations": list(CALIBRATION_PERTURBATIONS)}})
    if loo and len(families) > 1:
        det.meta["leave_one_out"] = leave_one_out(cfg, real_tr, real_cal, fam_tr, fam_cal,
                                                  epochs=loo_epochs or epochs, seed=seed, aug_p=aug_p,
                                                  stay_positive=stay_positive, log=log)
    return det
