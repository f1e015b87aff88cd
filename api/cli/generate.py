"""train, sample, eval-gen: the generator's commands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ddpm_guard.api.cli.common import (add_json, add_marking, add_out, add_precision, emit_report, marking_args,
                            nonnegative_float, positive_int, progress_log)
from ddpm_guard.generator.errors import GuardError

SAMPLERS = ["ddim", "ddpm", "dpmpp2m", "unipc"]


def cmd_train(a: argparse.Namespace) -> int:
    from ddpm_guard.generator.config import DiffusionConfig, TrainConfig, UNetConfig
    from ddpm_guard.generator.train import train_run

    if a.resume:
        last = train_run(a.out, resume=True, max_steps=a.steps, max_minutes=a.max_minutes)
    else:
        unet = UNetConfig(image_size=a.image_size or 28, in_channels=a.channels or 1,
                          base_channels=a.base_channels, channel_mult=tuple(a.channel_mult),
                          attention_resolutions=tuple(a.attention_resolutions), num_res_blocks=a.num_res_blocks,
                          num_classes=None if a.unconditional else 10, dropout=a.dropout)
        train = TrainConfig(dataset=a.data, batch_size=a.batch_size, lr=a.lr, max_steps=a.steps or 20000,
                            precision=a.precision, seed=a.seed, ema_decay=a.ema_decay,
                            warmup_steps=a.warmup_steps, checkpoint_every=a.checkpoint_every,
                            max_minutes=a.max_minutes)
        last = train_run(a.out, unet, DiffusionConfig(beta_schedule=a.schedule), train)
    print(json.dumps({"out": str(a.out), **last}))
    return 0


def cmd_sample(a: argparse.Namespace) -> int:
    from ddpm_guard.api import usecases
    from ddpm_guard.generator.pipeline import write_samples

    key, payload, signer = marking_args(a)
    if a.guided_mark and key is None:
        raise GuardError("--guided-mark needs --watermark-key")
    if a.decoder is not None and not a.guided_mark:
        raise GuardError("--decoder goes with --guided-mark")
    label = usecases.prompt_label(a.prompt, a.label)
    if a.prompt is not None and not a.json:
        print(f"prompt {a.prompt!r} -> digit {label}", file=sys.stderr)
    s = usecases.sampling(fast=a.fast, checkpoint=a.checkpoint, sampler=a.sampler, steps=a.steps, guidance=a.guidance)
    # a guided mark the decoder cannot read, or a --decoder folder that is no calibrated decoder, is refused before sampling
    images, labels = usecases.generate_images(s, a.n, key=key, payload=payload, guided_mark=a.guided_mark,
                                              decoder=a.decoder, label=label, eta=a.eta, variance=a.variance,
                                              seed=a.seed, precision=a.precision, progress=not a.json)
    paths = write_samples(images, a.out, labels)
    if signer is not None:
        usecases.sign_files(paths, signer, {"payload": None if payload is None else f"{payload:08x}",
                                            "key_fingerprint": None if key is None else key.fingerprint})
    for i, p in enumerate(paths):
        rec = {"path": str(p), "label": None if labels is None else int(labels[i]), "seed": a.seed,
               "watermarked": key is not None}
        if key is not None:
            rec.update(payload=f"{payload:08x}", key_fingerprint=key.fingerprint, guided_mark=a.guided_mark)
        if a.json:
            print(json.dumps(rec))
    if not a.json:
        mark = f", watermarked with key {key.fingerprint} payload {payload:08x}" if key is not None else ""
        print(f"wrote {len(paths)} samples and {Path(a.out) / 'grid.png'}{mark}")
    return 0


def cmd_eval_gen(a: argparse.Namespace) -> int:
    from ddpm_guard.generator.checkpoint import load_model
    from ddpm_guard.generator.evaluate import evaluate_generator

    model, schedule, _ = load_model(a.checkpoint)
    kw = {} if a.guidance is None else {"guidance": a.guidance}  # else the library's default scale
    report = evaluate_generator(model, schedule, n=a.n, sampler=a.sampler, steps=a.steps,
                                guidance_sweep=tuple(a.guidance_sweep), step_sweep=tuple(a.step_sweep or ()),
                                sweep_samplers=tuple(a.sweep_samplers), seed=a.seed,
                                out_dir=a.out, log=progress_log(a), **kw)
    return emit_report(report, a, "eval_gen.json")


def register(sub) -> None:
    t = sub.add_parser("train", help="train a DDPM on a named data set")
    t.add_argument("--data", default="mnist5k", help="mnist5k, fashion, digits, photos32 or folder:PATH (default mnist5k)")
    add_out(t, "run folder (checkpoints, config.json, train_log.jsonl)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    t.add_argument("--steps", type=positive_int, default=None, help="total optimiser steps (default 20000)")
    t.add_argument("--batch-size", type=positive_int, default=128)
    t.add_argument("--lr", type=float, default=2e-4)
    t.add_argument("--warmup-steps", type=int, default=500)
    t.add_argument("--ema-decay", type=float, default=0.999)
    add_precision(t, "auto: bf16 only where the CPU or GPU runs it natively (default bf16, as the bundled model)",
                  default="bf16", choices=("bf16", "fp32", "auto"))
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--checkpoint-every", type=positive_int, default=1000)
    t.add_argument("--max-minutes", type=nonnegative_float, default=None,
                   help="stop with a checkpoint after this wall time")
    t.add_argument("--image-size", type=positive_int, default=None, help="resize the data (default: 28)")
    t.add_argument("--channels", type=int, choices=[1, 3], default=None)
    t.add_argument("--base-channels", type=positive_int, default=64)
    t.add_argument("--channel-mult", type=positive_int, nargs="+", default=[1, 2, 2])
    t.add_argument("--num-res-blocks", type=positive_int, default=2)
    t.add_argument("--attention-resolutions", type=positive_int, nargs="*", default=[7])
    t.add_argument("--dropout", type=float, default=0.1)
    t.add_argument("--schedule", choices=["linear", "cosine"], default="linear")
    t.add_argument("--unconditional", action="store_true", help="no class conditioning (needed for unlabelled folders)")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="generate images with a trained model (default: the bundled MNIST model)")
    s.add_argument("--n", type=positive_int, default=64)
    add_out(s, "folder for one PNG per sample plus grid.png")
    s.add_argument("--sampler", choices=SAMPLERS, default=None,
                   help="ddim (default), ddpm (ancestral), dpmpp2m (DPM-Solver++(2M)) or unipc (UniPC-2): the last two need fewer steps")
    s.add_argument("--fast", action="store_true",
                   help="the fastest bundled configuration within +5 FID of the default (the distilled student; BENCHMARKS.md)")
    s.add_argument("--steps", type=positive_int, default=None,
                   help="sampling steps (default: 50 for DDIM, all 1000 for DDPM; fewer DDPM steps respace the chain)")
    s.add_argument("--eta", type=float, default=0.0, help="DDIM eta: 0 deterministic, 1 DDPM-like")
    s.add_argument("--variance", choices=["beta_tilde", "beta"], default="beta_tilde", help="DDPM sigma^2")
    s.add_argument("--label", type=int, default=None, help="class to draw; default spreads over all classes")
    s.add_argument("--prompt", default=None,
                   help='text prompt, e.g. "a handwritten seven" (needs the [text] extra); off-topic prompts are refused')
    s.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (1 = none)")
    s.add_argument("--seed", type=int, default=0)
    add_precision(s, "auto (default): bf16 only where the CPU or GPU runs it natively (2.4x on AVX-512 BF16), "
                     "fp32 elsewhere; a forced bf16 on an emulating CPU warns once")
    s.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the bundled model)")
    add_json(s, "one JSON line per written file")
    add_marking(s, "key file (ddpm-guard keys new): embed the watermark",
                "hex payload carried by the watermark, up to 32 bits (default 0)",
                "add a signed C2PA manifest and IPTC XMP DigitalSourceType (keys new-signer makes SIGNER_DIR)")
    s.add_argument("--guided-mark", action="store_true",
                   help="with --watermark-key: also steer the late steps toward the robust decoder's codeword "
                        "(survives rotation, blur, JPEG; costs visible quality, see BENCHMARKS.md)")
    s.add_argument("--decoder", default=None, metavar="DECODER_DIR",
                   help="with --guided-mark: steer toward this calibrated decoder folder instead of the bundled one "
                        "(keep it private: whoever holds the decoder can copy the mark; docs/watermark.md)")
    s.set_defaults(func=cmd_sample)

    e = sub.add_parser("eval-gen", help="FID/KID/precision/recall/class accuracy/memorization of a generator")
    e.add_argument("--checkpoint", default=None)
    e.add_argument("--n", type=positive_int, default=1000)
    e.add_argument("--sampler", choices=SAMPLERS, default="ddim")
    e.add_argument("--steps", type=positive_int, default=50)
    e.add_argument("--guidance", type=float, default=None)
    e.add_argument("--guidance-sweep", type=float, nargs="*", default=[1.0, 1.5, 2.0, 3.0])
    e.add_argument("--step-sweep", type=positive_int, nargs="*", default=None,
                   help="also FID at these step counts (1000 = DDPM ancestral), with a plot")
    e.add_argument("--sweep-samplers", nargs="+", choices=["ddim", "dpmpp2m", "unipc"], default=["ddim"],
                   help="the ODE samplers the step sweep runs (default ddim)")
    e.add_argument("--seed", type=int, default=0)
    add_out(e, "folder for eval_gen.json, grids and the plot", required=False)
    add_json(e)
    e.set_defaults(func=cmd_eval_gen)
