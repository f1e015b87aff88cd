"""demo, detect, detector train | calibrate | eval: the synthetic-image detector."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ddpm_guard.api.cli.common import (add_fake_cache, add_json, add_out, emit_report, exit_status, fake_cache, nonnegative_int,
                            positive_int, print_rows, progress_log, stderr_log)
from ddpm_guard.generator.errors import GuardError

NO_EXPERTS_HELP = ("the network judges every file: no edit expert (a tree ensemble on the stroke statistics that "
                   "judges the files the router thinks were JPEG'd, blurred, resized or noised)")


def cmd_demo(a: argparse.Namespace) -> int:
    from ddpm_guard.api.demo import DEMO_PAYLOAD, run_demo

    rows = run_demo(a.out)
    print(f"demo key: {Path(a.out) / 'demo.key'} (mode 0600); watermarked digits carry payload {DEMO_PAYLOAD}")
    print_rows(rows, a.json, ["path", "truth", "watermarked", "wm_p_value", "payload", "synthetic", "p_synthetic", "error"])
    return 0


def cmd_detect(a: argparse.Namespace) -> int:
    from ddpm_guard.detector.predict import detect_files, load_detector

    rows = detect_files(a.paths, load_detector(a.detector), zero_shot=a.zero_shot, progress=not a.json)
    if a.json:
        print_rows(rows, True, [])
    else:
        flat = [{**{k: v for k, v in r.items() if k != "scores"}, **r.get("scores", {})} for r in rows]
        cols = (["path", "synthetic", "p_synthetic", "threshold", "edit", "in_domain", "reason", "classifier"]
                + (["dire", "fused"] if a.zero_shot else []) + ["error"])
        print_rows(flat, False, cols)
    return exit_status(rows)


def _calibration_summary(det, out: str) -> dict:
    return {"out": str(out), "threshold": det.threshold,
            "routed_thresholds": None if det.router is None else det.router.by_edit,
            "calibration_fpr": det.meta.get("calibration_fpr"), "calibration_tpr": det.meta.get("calibration_tpr")}


def cmd_detector_train(a: argparse.Namespace) -> int:
    from ddpm_guard.detector.model import DetectorConfig
    from ddpm_guard.detector.sources import training_sources
    from ddpm_guard.detector.train import fit_detector

    families = training_sources(a.fake_generator, a.fake, a.real, a.out)
    cfg = DetectorConfig(input=a.input, background_floor=a.background_floor, stats=not a.no_stats)
    det = fit_detector(cfg, families=families, reals=a.real, epochs=a.epochs, seed=a.seed, aug_p=a.augment_p,
                       stay_positive=a.stay_positive, zero_shot=a.zero_shot, loo=not a.no_loo, loo_epochs=a.loo_epochs,
                       experts=not a.no_experts, cache=fake_cache(a), log=stderr_log)
    det.save(a.out)
    print(json.dumps({**_calibration_summary(det, a.out), "leave_one_out": det.meta.get("leave_one_out")}))
    return 0


def cmd_detector_calibrate(a: argparse.Namespace) -> int:
    from ddpm_guard.detector.predict import load_detector
    from ddpm_guard.detector.sources import training_sources
    from ddpm_guard.detector.train import recalibrate

    out = a.out or a.detector
    if out is None:
        raise GuardError("give --out (or --detector FOLDER to rewrite it): the bundled detector is not rewritten in place "
                         "by default")
    families = training_sources(a.fake_generator, a.fake, a.real, out)
    det = recalibrate(load_detector(a.detector), families=families, reals=a.real, seed=a.seed, route=not a.no_route,
                      experts=not a.no_experts, cache=fake_cache(a), log=stderr_log)
    det.save(out)
    print(json.dumps(_calibration_summary(det, out)))
    return 0


def cmd_detector_eval(a: argparse.Namespace) -> int:
    from ddpm_guard.detector.evaluate import evaluate_detector
    from ddpm_guard.detector.predict import load_detector
    from ddpm_guard.detector.sources import families, parse_generator, trained_families

    det = load_detector(a.detector)
    fams = families(a.fake_generator, a.fake, default_bundled=False) or trained_families(det.meta)
    fams += [parse_generator(g) for g in a.unseen_generator or []]
    if not fams:
        raise GuardError("no fake families to evaluate on; give --fake-generator or --fake")
    report = evaluate_detector(det, fams, seed=a.seed, cache=fake_cache(a), zero_shot_n=a.zero_shot_n,
                               out_dir=a.out, log=progress_log(a))
    return emit_report(report, a, "detector_eval.json")


def _add_sources(p: argparse.ArgumentParser, real_help: str, gen_help: str, fake_help: str) -> None:
    p.add_argument("--real", action="append", metavar="mnist5k|folder:PATH", help=real_help)
    p.add_argument("--fake-generator", action="append", metavar="RUN_DIR|bundled", help=gen_help)
    p.add_argument("--fake", action="append", metavar="folder:PATH", help=fake_help)


def register(sub) -> None:
    dm = sub.add_parser("demo", help="watermark, verify and detect on a few images; one table")
    add_out(dm, "folder for the demo key and images (default demo-out)", required=False, default="demo-out")
    add_json(dm)
    dm.set_defaults(func=cmd_demo)

    d = sub.add_parser("detect", help="score images for diffusion-generated content (files or folders)")
    d.add_argument("paths", nargs="+")
    d.add_argument("--zero-shot", action="store_true",
                   help="add the DIRE reconstruction score and the fused verdict (about 20 generator passes per image)")
    d.add_argument("--detector", default=None, help="detector folder (default: the bundled detector)")
    add_json(d, "one JSON object per image")
    d.set_defaults(func=cmd_detect)

    dt = sub.add_parser("detector", help="train or evaluate the detector").add_subparsers(dest="det_command", required=True)
    dtr = dt.add_parser("train", help="train, calibrate and save a detector on any real and fake sources, with a "
                        "leave-one-family-out report")
    add_out(dtr, "folder for model.safetensors, domain.safetensors and config.json")
    _add_sources(dtr, "real images (repeatable; default mnist5k). A folder is split 80/20 into train and calibration",
                 "a generator family to make fakes with (repeatable): a `ddpm-guard train` run, a "
                 "`ddpm-guard weights family` VAE/GAN folder, or `bundled` (the default when no fake source is given)",
                 "a folder of fakes made elsewhere (repeatable; one family each)")
    dtr.add_argument("--input", choices=["raw", "npr", "both"], default="raw", help="network input (default raw)")
    dtr.add_argument("--background-floor", type=nonnegative_int, default=32,
                     help="8-bit levels at or below which pixels are set to black before the network (default 32; 0 off)")
    dtr.add_argument("--no-stats", action="store_true",
                     help="CNN only: leave out the stroke-statistics branch (level histogram, core flatness) fused with it")
    dtr.add_argument("--epochs", type=positive_int, default=100, help="passes over the reals (default 100)")
    dtr.add_argument("--seed", type=int, default=0)
    dtr.add_argument("--augment-p", type=float, default=0.5,
                     help="probability of each augmentation per image, the same for both classes (default 0.5)")
    dtr.add_argument("--stay-positive", action="store_true",
                     help="clamp the last layer's weights to >= 0 (Rajan & Lee 2025): only evidence of 'synthetic' counts")
    dtr.add_argument("--no-loo", action="store_true", help="skip the leave-one-family-out report (one training per family)")
    dtr.add_argument("--loo-epochs", type=positive_int, default=40, help="epochs of each leave-one-out run (default 40)")
    dtr.add_argument("--zero-shot", action="store_true", help="also fit the DIRE fusion (bundled generator; slow)")
    dtr.add_argument("--no-experts", action="store_true", help=NO_EXPERTS_HELP)
    add_fake_cache(dtr)
    dtr.set_defaults(func=cmd_detector_train)

    dca = dt.add_parser("calibrate", help="refit a trained detector's calibration (Platt, the threshold, the edit "
                        "router and its expert, the out-of-domain score) on the same sources and seed as its training; the network is "
                        "kept")
    dca.add_argument("--detector", default=None, help="detector folder (default: the bundled detector; then give --out)")
    add_out(dca, "where to save (default: --detector, rewritten)", required=False)
    _add_sources(dca, "as for `detector train`",
                 "as for `detector train`, in the same order (it fixes the calibration draws)", "as for `detector train`")
    dca.add_argument("--seed", type=int, default=0, help="the training seed (default 0)")
    dca.add_argument("--no-route", action="store_true", help="one threshold for every image: no edit router (and so "
                     "no edit expert)")
    dca.add_argument("--no-experts", action="store_true", help=NO_EXPERTS_HELP)
    add_fake_cache(dca)
    dca.set_defaults(func=cmd_detector_calibrate)

    dev = dt.add_parser("eval", help="per family x perturbation: AUC, TPR@1%%FPR, real FPR at the stored threshold; "
                        "out-of-domain table, reliability diagram, ROC plot")
    dev.add_argument("--detector", default=None)
    dev.add_argument("--fake-generator", action="append", metavar="RUN_DIR|bundled",
                     help="families to evaluate on (repeatable; default: the ones the detector trained on)")
    dev.add_argument("--fake", action="append", metavar="folder:PATH", help="a folder of fakes (repeatable)")
    dev.add_argument("--unseen-generator", action="append", metavar="RUN_DIR",
                     help="a generator family the detector never trained on (repeatable): the honest 'unseen' row")
    dev.add_argument("--zero-shot-n", type=nonnegative_int, default=0, help="fakes per source for the DIRE comparison (0 skips)")
    dev.add_argument("--seed", type=int, default=0)
    add_out(dev, "folder for detector_eval.json, detector_roc.png, detector_reliability.png", required=False)
    add_json(dev)
    add_fake_cache(dev)
    dev.set_defaults(func=cmd_detector_eval)
