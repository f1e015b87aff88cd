"""weights ...: rebuild each bundled weight folder from its seed (the Makefile's `weights-*` targets chain them).

Training a generator is `ddpm-guard train` and a detector `ddpm-guard detector train`; the parts that have no
command of their own are here: the distilled students, the detector's VAE/GAN families, the guided mark's
decoder (train, read views, reader, calibration), the digit classifier of the metrics and the prompt mapper.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

from ddpm_guard.api.cli.common import add_out, out_file, out_folder, positive_int, stderr_log
from ddpm_guard.generator.errors import GuardError

_ARG_TYPES = {"int": int, "float": float, "str": str}


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One `--field-name` option per field of a config dataclass, typed like its default; a field whose default is
    None (`float | None`, `int | None`) takes the type its annotation names and defaults to None."""
    for f in fields(cls):
        if f.name in skip:
            continue
        kind = type(f.default) if f.default is not None else _ARG_TYPES[str(f.type).split("|")[0].strip()]
        parser.add_argument("--" + f.name.replace("_", "-"), type=kind, default=f.default)


def _config(a: argparse.Namespace, cls: type, skip: tuple[str, ...] = ()):
    return cls(**{f.name: getattr(a, f.name) for f in fields(cls) if f.name not in skip})


def cmd_distill(a: argparse.Namespace) -> int:
    from ddpm_guard.generator.distill import DistillConfig, distill

    distill(a.teacher, out_folder(a.out), _config(a, DistillConfig), log=stderr_log)
    return 0


def cmd_family(a: argparse.Namespace) -> int:
    from ddpm_guard.detector.families import FamilyConfig, save_family, train_family

    out_folder(a.out)
    net = train_family(FamilyConfig(kind=a.kind), steps=a.steps, seed=a.seed, log=stderr_log)
    save_family(net, a.out, {"train": {"command": f"ddpm-guard weights family --kind {a.kind} --out {a.out} "
                                                  f"--steps {a.steps} --seed {a.seed}", "data": "mnist5k train (4,000)",
                                       "steps": a.steps, "seed": a.seed}})
    print(json.dumps({"out": str(a.out), "kind": a.kind}))
    return 0


def cmd_decoder_train(a: argparse.Namespace) -> int:
    from ddpm_guard.watermark.guided.nets import DecoderConfig
    from ddpm_guard.watermark.guided.train import train_decoder, TrainConfig

    dcfg = DecoderConfig(bits=a.bits, width=a.width, canonical=bool(a.canonical))
    train_decoder(out_folder(a.out), _config(a, TrainConfig), dcfg, log=stderr_log)
    return 0


def cmd_decoder_views(a: argparse.Namespace) -> int:
    from ddpm_guard.watermark.guided.nets import set_read_views

    names = [v.strip() for v in a.views.split(",")]
    try:
        w = [float(v) for v in a.weights.split(",")] if a.weights else [1 / len(names)] * len(names)
    except ValueError:
        raise GuardError(f"--weights must be numbers, got {a.weights!r}") from None
    set_read_views(a.decoder, names, w)
    print(json.dumps({"decoder": str(a.decoder), "views": names, "weights": w,
                      "next": f"ddpm-guard weights decoder calibrate --decoder {a.decoder}"}))
    return 0


def cmd_decoder_reader(a: argparse.Namespace) -> int:
    from ddpm_guard.watermark.guided.nets import set_reader

    set_reader(a.decoder, None if a.reader == "none" else a.reader)
    print(json.dumps({"decoder": str(a.decoder), "reader": a.reader,
                      "next": f"ddpm-guard weights decoder calibrate --decoder {a.decoder}"}))
    return 0


def cmd_decoder_calibrate(a: argparse.Namespace) -> int:
    from ddpm_guard.generator.checkpoint import load_model
    from ddpm_guard.watermark.guided.calibrate import calibrate

    model, schedule, _ = load_model(None)
    cal = calibrate(a.decoder, model, schedule, n_samples=a.n_samples, n_marks=a.n_marks, log=stderr_log)
    print(json.dumps({"decoder": str(a.decoder), "n": cal["n"], "chip_balance_max_dev": cal["chip_balance_max_dev"]}))
    return 0


def cmd_reader_make(a: argparse.Namespace) -> int:
    from ddpm_guard.watermark.guided.train import make_marks

    make_marks(a.n, out_file(a.out), seed=a.seed, chunk=a.chunk, start=a.start, decoder=a.decoder, log=stderr_log)
    return 0


def cmd_reader_train(a: argparse.Namespace) -> int:
    from ddpm_guard.watermark.guided.train import train_reader

    info = train_reader(a.marks, out_folder(a.out), steps=a.steps, batch_size=a.batch_size, lr=a.lr, max_aspect=a.max_aspect,
                        seed=a.seed, decoder=a.decoder, log=stderr_log)
    print(json.dumps(info))
    return 0


def cmd_classifier(a: argparse.Namespace) -> int:
    from ddpm_guard.generator.classifier import BUNDLED_CLASSIFIER, rebuild_classifier

    out = out_folder(a.out or BUNDLED_CLASSIFIER)
    acc = rebuild_classifier(out, log=stderr_log)
    print(json.dumps({"out": str(out), "heldout_accuracy": acc}))
    return 0


def cmd_prompts(a: argparse.Namespace) -> int:
    from ddpm_guard.generator.text import WEIGHTS, fit_prompt_model, save_prompt_model

    m = fit_prompt_model()
    out = out_folder(a.out or WEIGHTS)
    save_prompt_model(m, out)
    print(json.dumps({"out": str(out), "thresholds": m.thresholds}))
    return 0


def register(sub) -> None:
    from ddpm_guard.detector.families import KINDS
    from ddpm_guard.generator.distill import DistillConfig
    from ddpm_guard.watermark.guided.config import DecoderConfig, TrainConfig  # no torch: the parser stays light

    w = sub.add_parser("weights", help="rebuild a bundled weight folder from its seed (students, families, the mark's "
                       "decoder, the classifier, the prompt mapper)").add_subparsers(dest="weights_command", required=True)

    d = w.add_parser("distill", help="distil a generator into a few-step student (progressive or consistency)")
    d.add_argument("--teacher", default=None, help="teacher checkpoint folder (default: the bundled model)")
    add_out(d, "the student's folder")
    add_config_arguments(d, DistillConfig)
    d.set_defaults(func=cmd_distill)

    f = w.add_parser("family", help="train a VAE or GAN generator family for the detector's training and evaluation")
    f.add_argument("--kind", choices=KINDS, required=True)
    add_out(f, "the family's folder")
    f.add_argument("--steps", type=positive_int, default=3000)
    f.add_argument("--seed", type=int, default=0)
    f.set_defaults(func=cmd_family)

    dec = w.add_parser("decoder", help="the guided mark's decoder: train, read views, reader, calibrate"
                       ).add_subparsers(dest="decoder_command", required=True)
    dt = dec.add_parser("train", help="train the message encoder/decoder pair through the attack layer")
    add_out(dt, "the decoder's folder")
    add_config_arguments(dt, TrainConfig)
    dt.add_argument("--bits", type=int, default=DecoderConfig.bits)
    dt.add_argument("--width", type=int, default=DecoderConfig.width)
    dt.add_argument("--canonical", type=int, default=1, help="moment normalisation before the CNN (1, the default) or not (0)")
    dt.set_defaults(func=cmd_decoder_train)
    dv = dec.add_parser("views", help="read the decoder under these inverse views (then calibrate)")
    dv.add_argument("--decoder", required=True, metavar="DECODER_DIR")
    dv.add_argument("--views", required=True, help="comma-separated view names, the first id (e.g. id,sx,sy,unbright)")
    dv.add_argument("--weights", default=None, help="each view's share of alpha, comma-separated, summing to 1 (default equal)")
    dv.set_defaults(func=cmd_decoder_views)
    dr = dec.add_parser("reader", help="read the decoder with the network trained in READER_DIR ('none' takes it away; "
                        "then calibrate)")
    dr.add_argument("--decoder", required=True, metavar="DECODER_DIR")
    dr.add_argument("reader", metavar="READER_DIR")
    dr.set_defaults(func=cmd_decoder_reader)
    dc = dec.add_parser("calibrate", help="measure the chips' centres and the nulls on unmarked images and guided marks")
    dc.add_argument("--decoder", required=True, metavar="DECODER_DIR")
    dc.add_argument("--n-samples", type=positive_int, default=2000)
    dc.add_argument("--n-marks", type=int, default=256,
                    help="guided marks with random codewords for the soft test's other null (0: none)")
    dc.set_defaults(func=cmd_decoder_calibrate)

    rd = w.add_parser("reader", help="the decoder's reading network: make guided marks, fine-tune on them"
                      ).add_subparsers(dest="reader_command", required=True)
    m = rd.add_parser("make", help="make guided marks with random codewords")
    m.add_argument("--n", type=positive_int, default=5120)
    add_out(m, "the marks file (.safetensors)")
    m.add_argument("--seed", type=int, default=50_000)
    m.add_argument("--chunk", type=positive_int, default=128)
    m.add_argument("--start", type=int, default=0, help="skip the marks before this one (a multiple of --chunk)")
    t = rd.add_parser("train", help="fine-tune a reader on marks files")
    t.add_argument("marks", nargs="+")
    add_out(t, "the reader's folder")
    t.add_argument("--steps", type=positive_int, default=3000)
    t.add_argument("--batch-size", type=positive_int, default=64)
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--max-aspect", type=float, default=4 / 3)
    t.add_argument("--seed", type=int, default=0)
    for q, fn in ((m, cmd_reader_make), (t, cmd_reader_train)):
        q.add_argument("--decoder", default=None, help="the decoder folder guidance steers (default: the bundled one)")
        q.set_defaults(func=fn)

    c = w.add_parser("classifier", help="the digit classifier of the offline metrics (mnist5k, 15 epochs, seed 0)")
    add_out(c, "folder (default: the bundled generator/weights/digit_classifier)", required=False)
    c.set_defaults(func=cmd_classifier)
    pr = w.add_parser("prompts", help="the prompt mapper's head and thresholds (text-to-image; needs the [text] extra)")
    add_out(pr, "folder (default: the bundled generator/weights/prompts)", required=False)
    pr.set_defaults(func=cmd_prompts)
