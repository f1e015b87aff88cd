"""Attacks on the watermark scheme itself (issue 10): forgery, removal by regeneration, key secrecy and a
white-box copy attack, each read the way `watermark verify` reads a file.

    python bench/watermark/scheme_attacks.py [--key-seed 2] [--n 100] > bench/results/watermark_scheme_attacks.json

Marks are made as `sample --watermark-key K --guided-mark` makes them (the keyed x_T and the guided codeword,
DDIM 50, bundled model and decoder) under the key from --key-seed (2: the held-out key; 1 is the development
key the guided scheme was tuned on). Readers:
- "fast": the guided mark, no inversion (`watermark verify`, the default);
- "deep": the keyed x_T alone, by DDIM inversion (what `--deep` adds);
- "combined": both, Sidak over the smaller p-value (`watermark verify --deep`).
Rates are at alpha = 1 %. Reals are the 1,000 held-out mnist5k digits (never trained on); every image is
saved as 8 bits before it is read.

1. Averaging forgery: the mean residual of n marked images, added to real digits. Two residuals:
   "public": the mean of the marked images minus the mean of n real training digits (what anyone holding
   marked images and real digits can form); "paired": the mean of (guided-marked - same-seed x_T-only
   sample), which needs the generator and its seeds (an insider). At 1x and 4x.
2. Regeneration: a marked image noised to t = 100 or 200 (the bundled model's linear schedule), then
   denoised by DDIM (10 steps, null class) with a DDPM trained separately here,
   bench/detector/generators/ddpm-c (same linear schedule; never the model the mark came from). Reported:
   how many marks survive, and how many regenerated real digits are falsely attributed.
3. Key secrecy: n marks read under 100 other keys each: how often a wrong key detects or decodes a payload.
4. Copy attack with the bundled decoder: read the 72 chips of a marked image (the decoder and its
   calibration ship in the wheel), then push a real digit to the same chips by gradient steps (Adam, 300
   steps, a hinge on the centred logits plus a weighted squared-change penalty: weights 100-3000 set the
   imperceptibility budget), saved as 8 bits. The attacker never sees the key. Reported: how often the
   forgery verifies under the key, with the victim's payload, and its PSNR against the real digit (the
   guided mark itself costs 28.6 dB). `copy-file`: the same, pushing only the decoder's file view (a
   decoder read under several views; the other views read a marked file's chips as noise, so pushing them
   wastes the budget).
5. (`--parts private --private-decoder D`) Marks made and read with a decoder D the attacker does not hold
   (an operator's own, trained like the bundled one): the copy attack made with the public bundled decoder,
   and, as the white-box control, with D itself.

    python bench/watermark/scheme_attacks.py --parts private --private-decoder runs/wm/affine > ...
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from ddpm_guard.generator.checkpoint import load_model
from ddpm_guard.generator.data import load_dataset
from ddpm_guard.generator.errors import GuardError
from ddpm_guard.generator.image_io import quantize
from ddpm_guard.generator.metrics import psnr_db
from ddpm_guard.generator.samplers import denoise_from
from ddpm_guard.watermark.marking import MarkSpec, generate_marked
from ddpm_guard.watermark.guided.read import decode_logits, decoder_and_center, verify_guided
from ddpm_guard.watermark.guided.statistic import read_logits
from ddpm_guard.watermark.keys import WatermarkKey
from ddpm_guard.watermark.verify import verify_images

REGEN_MODEL = "bench/detector/generators/ddpm-c"
PAYLOAD = 0xC0FFEE42
PARTS = {"averaging", "regeneration", "keys", "copy", "copy-file", "private"}


def rates(rows: list[dict]) -> dict:
    return {"detected": float(np.mean([r.detected for r in rows])),
            "payload_valid": float(np.mean([r.payload_valid for r in rows]))}


def read(x, key, model, schedule, deep_n: int) -> dict:
    """Detection and valid-payload rates per reader; the inversion readers on the first deep_n images."""
    ring = {"k": key}
    out = {"fast": rates(verify_images(x, ring, model, schedule, deep=False, guided=True)), "n": len(x)}
    if deep_n:
        xd = x[:deep_n]
        out["deep"] = rates(verify_images(xd, ring, model, schedule, deep=True, guided=False))
        out["combined"] = rates(verify_images(xd, ring, model, schedule, deep=True, guided=True))
        out["n_deep"] = len(xd)
    return out


def copy_attack(host: torch.Tensor, source: torch.Tensor, weight: float, steps: int = 300,
                decoder: str | None = None, file_view_only: bool = False) -> torch.Tensor:
    """Push each host digit toward the chips the decoder reads in its source (marked) image: Adam on the
    pixels, a hinge on the centred logits plus `weight` x the mean squared change (the imperceptibility
    budget: a larger weight, a smaller change), saved as 8 bits. (Signed-gradient steps inside an
    L-infinity ball stalled at chance here: the decoder's frame and brightness normalisation mask the sign.)
    `file_view_only`: for a decoder read under several views, attack only the file itself (the view the marks
    are written for, and the one the verifier gives the largest share of alpha): the adaptive attacker's choice,
    since the other views read a marked file's chips as noise. The network attacked is the one that reads the file
    view: the decoder's reader when it has one (watermark.reader), else the decoder itself."""
    dec, cal = decoder_and_center(decoder)
    if file_view_only:
        dec = dec.file_reader
        cal = cal.head(dec.config.bits)
    center = cal.center.float()
    with torch.no_grad():
        target = torch.sign(dec(source) - center)
    delta = (0.01 * torch.randn(host.shape, generator=torch.Generator().manual_seed(0))).requires_grad_(True)
    opt = torch.optim.Adam([delta], lr=0.01)
    for _ in range(steps):
        x = (host + delta).clamp(-1, 1)
        loss = F.relu(2.0 - target * (dec(x) - center)).mean() + weight * ((x - host) / 2).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return quantize((host + delta.detach()).clamp(-1, 1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--key-seed", type=int, default=2)
    ap.add_argument("--n", type=int, default=100, help="marked images (the averaging uses all of them)")
    ap.add_argument("--deep-n", type=int, default=100, help="images read by inversion per condition")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parts", default="averaging,regeneration,keys,copy",
                    help="comma-separated, of averaging, regeneration, keys, copy, copy-file, private")
    ap.add_argument("--private-decoder", default=None,
                    help="for the 'private' part: a decoder folder the attacker does not hold")
    a = ap.parse_args()
    parts = set(a.parts.split(","))
    if parts - PARTS:
        ap.error(f"unknown --parts {sorted(parts - PARTS)}; choose from {sorted(PARTS)}")
    if "private" in parts and not a.private_decoder:
        ap.error("--parts private needs --private-decoder")
    if a.private_decoder:
        try:  # before any sampling: a wrong folder is one message, not a traceback after minutes
            decoder_and_center(a.private_decoder)
        except GuardError as e:
            ap.error(str(e))
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    t_start = time.time()
    key = WatermarkKey(bytes([a.key_seed]) * 32)
    model, schedule, _ = load_model(None, device="cpu")
    kw = dict(steps=50, precision="auto")
    marked, _ = generate_marked(model, schedule, key, PAYLOAD, a.n, MarkSpec.of(guided=True), seed=a.seed, **kw)
    marked = quantize(marked)
    real = load_dataset("mnist5k", "heldout").images
    g = torch.Generator().manual_seed(a.seed + 1)
    out: dict = {"cpu": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
                 "key_seed": a.key_seed, "n_marked": a.n, "alpha": 0.01}
    out["marked"] = read(marked, key, model, schedule, a.deep_n)
    out["real"] = read(real, key, model, schedule, a.deep_n)
    log(f"marked {out['marked']}, real {out['real']}")

    if "averaging" in parts:
        averaging(out, marked, real, key, model, schedule, a, g, log)
    if "regeneration" in parts:
        regeneration(out, marked, real, key, model, schedule, a, g, log)
    if "keys" in parts:
        other_keys(out, marked, key, model, schedule, a, log)
    if "copy" in parts:
        copy(out, marked, real[:a.n], key, model, schedule, a, None, log)
    if "copy-file" in parts:  # the bundled decoder's file view only (the same as "copy" for a one-view decoder)
        copy(out, marked, real[:a.n], key, model, schedule, a, None, log, "copy, file view only", file_view_only=True)
    if "private" in parts:
        private(out, real, key, model, schedule, a, log)
    out["minutes"] = (time.time() - t_start) / 60
    print(json.dumps(out, indent=1))


def averaging(out, marked, real, key, model, schedule, a, g, log):
    """1. averaging forgery: the mean residual of the marked images added to every held-out real digit"""
    xt_only = quantize(generate_marked(model, schedule, key, PAYLOAD, a.n, seed=a.seed, steps=50, precision="auto")[0])
    train = load_dataset("mnist5k", "train").images
    public = marked.mean(0) - train[torch.randperm(len(train), generator=g)[:a.n]].mean(0)
    paired = (marked - xt_only).mean(0)
    out["averaging"] = {}
    for name, r in (("public", public), ("paired", paired)):
        for s in (1, 4):
            forged = quantize(real + s * r)
            row = read(forged, key, model, schedule, a.deep_n)
            row["psnr_db"] = psnr_db(forged, real)
            out["averaging"][f"{name} x{s}"] = row
            log(f"averaging {name} x{s}: {row}")



def regeneration(out, marked, real, key, model, schedule, a, g, log):
    """2. regeneration with a separately trained DDPM"""
    regen_model, regen_schedule, _ = load_model(REGEN_MODEL, device="cpu")
    out["regeneration"] = {"model": REGEN_MODEL}
    for t in (100, 200):
        row = {}
        for name, x in (("marked", marked), ("real", real[:len(marked) * 2])):
            noise = torch.randn(x.shape, generator=g)
            x_t = regen_schedule.add_noise(x, noise, torch.full((len(x),), t)).float()
            y = quantize(denoise_from(regen_model, regen_schedule, x_t, t, steps=10))
            row[name] = read(y, key, model, schedule, a.deep_n)
            row[name]["psnr_db"] = psnr_db(y, x)
        out["regeneration"][f"t={t}"] = row
        log(f"regeneration t={t}: {row}")



def other_keys(out, marked, key, model, schedule, a, log):
    """3. key secrecy: the marks under 100 other keys"""
    others = [WatermarkKey(key.stream(f"bench/other-key/{i}", 32)) for i in range(100)]
    logits = decode_logits(marked)
    _, cal = decoder_and_center()
    det, valid = [], []
    for k in others:
        for r in read_logits(logits, cal, k):
            det.append(r.p_value < 0.01)
            valid.append(r.payload_valid)
    deep_det = []
    for k in others[:10]:  # the inversion does not depend on the key, but verify_images runs it per call
        deep_det += [r.detected for r in verify_images(marked[:a.deep_n // 2], {"k": k}, model, schedule,
                                                          deep=True, guided=False)]
    out["other_keys"] = {"keys": len(others), "pairs_fast": len(det), "fast_detected": float(np.mean(det)),
                         "fast_payload_valid": float(np.mean(valid)), "pairs_deep": len(deep_det),
                         "deep_detected": float(np.mean(deep_det))}
    log(f"other keys: {out['other_keys']}")



def copy(out, marked, host, key, model, schedule, a, attacker, log, name="copy", verifier=None, file_view_only=False):
    """4. copy attack: the chips the attacker's decoder reads in marked image i, pushed onto real digit i.
    Read by the verifier's decoder (the bundled one unless given)."""
    out[name] = {}
    for weight in (100, 300, 1000, 3000):
        forged = copy_attack(host, marked, weight, decoder=attacker, file_view_only=file_view_only)
        reads = verify_guided(forged, key, decoder=verifier)  # the verifier's decoder, run once
        if verifier is None:
            row = read(forged, key, model, schedule, a.deep_n)
        else:
            row = {"fast": {"detected": float(np.mean([r.p_value < 0.01 for r in reads]))}}
        row["psnr_db"] = psnr_db(forged, host)
        row["fast_victims_payload"] = float(np.mean([r.payload == f"{PAYLOAD:08x}" for r in reads]))
        out[name][f"weight {weight}"] = row
        log(f"{name} weight {weight}: {row}")


def private(out, real, key, model, schedule, a, log):
    """5. marks made and read with a decoder the attacker does not hold: the copy attack made with the public
    (bundled) decoder, then, as the white-box control, with the private decoder itself."""
    d = a.private_decoder
    marked, _ = generate_marked(model, schedule, key, PAYLOAD, a.n, MarkSpec.of(guided=True, decoder=d), seed=a.seed, steps=50, precision="auto")
    marked = quantize(marked)
    reads = verify_guided(marked, key, decoder=d)
    out["private"] = {"decoder": d, "marked_detected": float(np.mean([r.p_value < 0.01 for r in reads])),
                      "real_detected": float(np.mean([r.p_value < 0.01 for r in verify_guided(real, key, decoder=d)]))}
    log(f"private: {out['private']}")
    copy(out, marked, real[:a.n], key, model, schedule, a, None, log, "private: copied with the public decoder", d)
    copy(out, marked, real[:a.n], key, model, schedule, a, d, log, "private: copied with the private decoder", d)


if __name__ == "__main__":
    main()
