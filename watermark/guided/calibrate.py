"""The guided mark's calibration, stored with the decoder: per-chip medians and MADs of its logits on unmarked images
(training digits and unmarked samples, clean and through the attack layer), the soft chips' second moments, and the
same moments on guided marks with random codewords (the other null). `ddpm-guard weights decoder calibrate` runs it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ddpm_guard.generator.data import load_dataset
from ddpm_guard.generator.fsutil import atomic_write_bytes
from ddpm_guard.generator.image_io import quantize
from ddpm_guard.generator.pipeline import generate
from ddpm_guard.watermark.attacks import attack_layer
from ddpm_guard.watermark.guided.guidance import guided_marks
from ddpm_guard.watermark.guided.nets import load_decoder
from ddpm_guard.watermark.guided.read import forget_decoders
from ddpm_guard.watermark.guided.statistic import Calibration, soft_chips, zero_bit_test
from ddpm_guard.watermark.keys import WatermarkKey


def calibrate(decoder_dir: str, model, schedule, *, n_samples: int = 2000, seed: int = 1000, n_marks: int = 256,
              log=print) -> dict:
    """Measure the decoder's per-chip logit medians on unmarked images and store them in decoder.json.

    The negatives are the training digits (mnist5k train) and unmarked samples of the generator (seeds
    from 1000 on: apart from every benchmark's), each clean and through the attack layer. The held-out
    digits are not used: the false-positive checks run on them."""
    dec, record = load_decoder(decoder_dir)
    real = load_dataset("mnist5k", "train").images
    fake = quantize(generate(model, schedule, n_samples, seed=seed, precision="auto")[0])
    x = torch.cat([real, fake])
    gen = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        xa = attack_layer(x, gen, identity_share=0.0)
        logits = torch.cat([dec(x), dec(xa)])
        # a decoder with a reader: guidance centres the guided decoder's own logits, so their medians are kept too
        embed = torch.cat([dec.embed(x), dec.embed(xa)]) if dec.reader is not None else None
    cal = Calibration.fit(logits, record.get("view_weights"), dec.copies,
                          embed.median(0).values.double() if embed is not None else None)
    marked_cov = None
    if n_marks:
        # the soft test's other null: guided marks with random codewords (seeds 90,000 on), as made, read in the view
        # they are written for (the file itself). That is the strongest reading a mark gets, so its spread bounds what
        # a mark under another key does in any view (an attacked mark read in the view that undoes the attack)
        marks, _ = guided_marks(n_marks, seed=90_000, chunk=128, net=dec.embed,
                                center=cal.guide_center(dec.embed.config.bits), log=log)
        with torch.inference_mode():
            zm = soft_chips(dec(marks), cal.center, cal.mad, dec.copies, cal.soft_clip)[:, 0]
        marked_cov = zm.T @ zm / len(zm)
        cal = replace(cal, soft_cov_marked=marked_cov)
    hard = (logits - cal.center.float() < 0).float()
    record["calibration"] = {"center": cal.center.tolist(), "sign_cov": cal.sign_cov.tolist(),
                             "mad": cal.mad.tolist(), "soft_cov": cal.soft_cov.tolist(), "soft_clip": cal.soft_clip,
                             **({"soft_cov_marked": marked_cov.tolist(), "marks": n_marks} if n_marks else {}),
                             **({"embed_center": cal.embed_center.tolist()} if embed is not None else {}),
                             "n": len(logits), "real_train": len(real),
                             "samples": n_samples, "seed": seed,
                             "chip_balance_max_dev": float((hard.mean(0) - 0.5).abs().max())}
    # the test's false-positive rate on these same negatives over 20 keys (training data: a sanity check; the
    # held-out check is `watermark eval --guided`)
    keys = [WatermarkKey(hashlib.sha256(f"calibration-key-{i}".encode()).digest()) for i in range(20)]
    ps = np.concatenate([zero_bit_test(logits, cal, k)[0] for k in keys])
    record["calibration"]["fpr_soft"] = {"alpha_0.01": float((ps < 0.01).mean()), "alpha_0.001": float((ps < 0.001).mean())}
    log(f"soft: FPR {record['calibration']['fpr_soft']} over 20 keys")
    atomic_write_bytes(Path(decoder_dir) / "decoder.json", json.dumps(record, indent=1).encode())
    forget_decoders()
    log(f"calibrated on {len(logits)} unmarked images; largest chip imbalance "
        f"{record['calibration']['chip_balance_max_dev']:.3f}")
    return record["calibration"]
