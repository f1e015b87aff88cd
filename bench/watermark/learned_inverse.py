"""Can a learned decoder read the x_T mark (Gaussian Shading) back from the image, without inversion and
through the edits? A probe for issue 10: the x_T mark costs no quality, but DDIM inversion reads it only on
untouched files (BENCHMARKS, "Watermark").

    python bench/watermark/learned_inverse.py pairs MODEL N SEED OUT.safetensors   # (x_T, 8-bit image) pairs
    python bench/watermark/learned_inverse.py train PAIRS OUT_DIR [--steps S] [--coeffs K] [--canonical 0|1]
    python bench/watermark/learned_inverse.py eval PAIRS OUT_DIR [--pairs-test P2]

The decoder (watermark.decoder.MessageDecoder) is trained with BCE to predict the sign of each of the K
lowest-frequency orthonormal DCT coefficients of x_T (zig-zag order) from the image, through the decoder's
attack layer. The eval simulates the zero-bit test exactly: a marked image's x_T has the key's signs on the
chip coefficients and |N(0,1)| magnitudes, which is how a random x_T with key := its own signs is distributed.
So positives score their own signs, negatives a random key's, over the chips selected on a validation half.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from watermark.decoder import DecoderConfig, MessageDecoder, attack_layer
from watermark.embed import dct_matrix


def zigzag(n: int, k: int) -> torch.Tensor:
    """Flat indices of the k lowest-frequency coefficients of an n x n DCT (by u + v, then u)."""
    order = sorted((u + v, u, v) for u in range(n) for v in range(n))
    return torch.tensor([u * n + v for _, u, v in order[:k]])


def coeffs(xT: torch.Tensor) -> torch.Tensor:
    C = dct_matrix(xT.shape[-1]).float()
    return (C @ xT[:, 0] @ C.T).flatten(1)


def make_pairs(model_dir: str, n: int, seed: int, out: str) -> None:
    from safetensors.torch import save_file

    from generator.checkpoint import load_model
    from generator.image_io import quantize
    from generator.pipeline import generate
    model, sched, _ = load_model(model_dir)
    xT = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    labels = torch.arange(n) % 10
    t = time.time()
    x, _ = generate(model, sched, n, x_T=xT, labels=labels, batch_size=512)
    u8 = ((quantize(x) + 1) * 127.5).round().to(torch.uint8)
    save_file({"xT": xT.contiguous(), "x": u8.contiguous(), "labels": labels}, out)
    print(json.dumps({"pairs": n, "seconds": time.time() - t}))


def load_pairs(path: str):
    from safetensors.torch import load_file
    d = load_file(path)
    return d["x"].float() / 127.5 - 1, d["xT"]


def train(pairs: str, out: str, steps: int, k: int, canonical: bool, seed: int, batch: int = 128) -> None:
    from safetensors.torch import save_file
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x, xT = load_pairs(pairs)
    n_train = int(len(x) * 0.9)
    idx = zigzag(28, k)
    target = (coeffs(xT)[:, idx] > 0).float()
    dec = MessageDecoder(DecoderConfig(bits=k, canonical=canonical))
    opt = torch.optim.Adam(dec.parameters(), lr=1e-3)
    t0, acc = time.time(), []
    for step in range(1, steps + 1):
        lr = 1e-3 * min(1.0, step / 200) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for g in opt.param_groups:
            g["lr"] = lr
        b = torch.randint(0, n_train, (batch,), generator=gen)
        ramp = min(1.0, step / (0.3 * steps))
        xa = attack_layer(x[b], gen, 1 - ramp * 0.7)
        logits = dec(xa)
        loss = F.binary_cross_entropy_with_logits(logits, target[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        acc.append(float(((logits > 0).float() == target[b]).float().mean()))
        if step % 250 == 0 or step == steps:
            print(json.dumps({"step": step, "acc": float(np.mean(acc)), "loss": loss.item(),
                              "minutes": (time.time() - t0) / 60}), flush=True)
            acc.clear()
            Path(out).mkdir(parents=True, exist_ok=True)
            save_file({k_: v.contiguous() for k_, v in dec.state_dict().items()}, f"{out}/decoder.safetensors")
            Path(f"{out}/config.json").write_text(json.dumps({"bits": k, "canonical": canonical, "steps": steps,
                                                              "seed": seed, "pairs": pairs}))


@torch.no_grad()
def evaluate(pairs: str, out: str, test_pairs: str | None) -> dict:
    from safetensors.torch import load_file

    from generator.image_io import quantize
    from watermark.attacks import ATTACKS
    cfg = json.loads(Path(f"{out}/config.json").read_text())
    dec = MessageDecoder(DecoderConfig(bits=cfg["bits"], canonical=cfg["canonical"]))
    dec.load_state_dict(load_file(f"{out}/decoder.safetensors"))
    dec.eval()
    idx = zigzag(28, cfg["bits"])
    if test_pairs:
        x, xT = load_pairs(test_pairs)
    else:
        x, xT = load_pairs(pairs)
        n_train = int(len(x) * 0.9)
        x, xT = x[n_train:], xT[n_train:]
    s = torch.where(coeffs(xT)[:, idx] > 0, 1.0, -1.0)
    half = len(x) // 2
    g = torch.Generator().manual_seed(5)
    res = {}
    conds = ["clean", "rotate75", "jpeg25", "crop0.75", "blur1", "noise0.1", "brightness0-6"]
    for cond in conds:
        xa = quantize(ATTACKS[cond](x, g))
        l = torch.cat([dec(xa[i:i + 512]) for i in range(0, len(xa), 512)])
        agree = ((l > 0).float() * 2 - 1) == s
        acc_B = agree[half:].float().mean(0)
        mu = l[:half].mean(0)  # centring, fitted on half A (content-predictable coefficients)
        # weights from half A: each coefficient's centred logit's correlation with the true sign
        la, lb = l[:half] - mu, l[half:] - mu
        rho = ((la * s[:half]).mean(0) / la.std(0).clamp(min=1e-6))
        row = {"mean_acc": float(acc_B.mean())}
        w = rho.clamp(min=0) / lb.std(0)  # every coefficient, weighted by its half-A correlation
        pos = (lb * s[half:] * w).sum(1)
        for nonces in (1, 4, 16, 256):
            # one of `nonces` keyed sign patterns per image: the verifier takes the best pattern, so the null is
            # the max over `nonces` random patterns and a marked image scores max(its own, the others)
            keys = torch.where(torch.rand(max(nonces, 8), len(idx), generator=g) > 0.5, 1.0, -1.0)
            stats = (lb * w) @ keys.T
            if nonces == 1:
                neg, p_ = stats.flatten(), pos  # eight independent keys pooled as negatives
            else:
                neg = stats[:, :nonces].max(1).values
                p_ = torch.maximum(pos, stats[:, 1:nonces].max(1).values)
            row[f"tpr_nonces{nonces}"] = float((p_ > neg.quantile(0.99)).float().mean())
        res[cond] = row
        print(cond, json.dumps(row), flush=True)
    res["mean7"] = {k: float(np.mean([res[c][k] for c in conds])) for k in res["clean"]}
    print("mean7", json.dumps(res["mean7"]))
    return res


def fid_fixed_signs(model_dir: str, k: int, n: int, seeds: int, nonces: int = 1) -> dict:
    """FID (project classifier features, against the held-out digits) of samples whose x_T has one key's
    signs on the k lowest DCT coefficients (|N(0,1)| magnitudes; one of `nonces` sign patterns per image),
    beside plain samples of the same seeds: what fixing the readable coefficients costs in diversity."""
    from generator.checkpoint import load_model
    from generator.classifier import predict
    from generator.evaluate import heldout_reference
    from generator.image_io import quantize
    from generator.metrics import fid
    from generator.pipeline import generate
    model, sched, _ = load_model(model_dir)
    net, ref = heldout_reference()
    C = dct_matrix(28).float()
    idx = zigzag(28, k)
    keys = torch.where(torch.rand(nonces, k, generator=torch.Generator().manual_seed(99)) > 0.5, 1.0, -1.0)
    rows = {"plain": [], "marked": []}
    for s in range(100, 100 + seeds):
        g = torch.Generator().manual_seed(s)
        xT = torch.randn(n, 1, 28, 28, generator=g)
        c = (C @ xT[:, 0] @ C.T).flatten(1)
        pick = torch.randint(0, nonces, (n,), generator=g)
        c[:, idx] = c[:, idx].abs() * keys[pick]
        xm = (C.T @ c.view(n, 28, 28) @ C)[:, None]
        for name, z in (("plain", xT), ("marked", xm)):
            x, _ = generate(model, sched, n, x_T=z, seed=s)
            rows[name].append(fid(predict(net, quantize(x))[0].numpy(), ref))
        print(json.dumps({"seed": s, "plain": rows["plain"][-1], "marked": rows["marked"][-1]}), flush=True)
    p, m = np.array(rows["plain"]), np.array(rows["marked"])
    out = {"k": k, "n": n, "nonces": nonces, "plain": p.tolist(), "marked": m.tolist(),
           "change": float(m.mean() - p.mean()), "plain_sd": float(p.std(ddof=1))}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("cmd")
    p.add_argument("args", nargs="*")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--coeffs", type=int, default=256)
    p.add_argument("--canonical", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pairs-test", default=None)
    a = p.parse_args()
    torch.set_num_threads(2)
    if a.cmd == "pairs":
        make_pairs(a.args[0], int(a.args[1]), int(a.args[2]), a.args[3])
    elif a.cmd == "train":
        train(a.args[0], a.args[1], a.steps, a.coeffs, bool(a.canonical), a.seed)
    elif a.cmd == "fid":
        fid_fixed_signs(a.args[0], a.coeffs, int(a.args[1]), int(a.args[2]), int(a.args[3]) if len(a.args) > 3 else 1)
    else:
        evaluate(a.args[0], a.args[1], a.pairs_test)
