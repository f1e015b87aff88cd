"""Training the guided mark's networks.

The decoder: trained jointly with a HiDDeN-style encoder (Zhu et al. 2018) on the training digits through the attack
layer (watermark.attacks.attack_layer), with a curriculum that ramps the attacks and the image penalty in.

A reader for the guided mark, trained on the guided marks themselves (issue 10: "train it ... directly against
guided samples").

The bundled decoder learned from a HiDDeN encoder's marks; guidance then writes whatever that decoder reads, which
is not what the encoder wrote. The reader is a copy of the decoder fine-tuned to read the chips back from real
guided marks through the attack layer. Guidance keeps steering the decoder itself, so the marks, their quality and
their cost do not change; verification reads every view with the reader (watermark.guided.nets.ViewedDecoder).

The marks carry random codewords (no key is involved) from seeds apart from every evaluation's (50,000 on; the
benchmarks use 0-1,100). `make weights-decoder` runs the whole chain (docs/weights.md).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ddpm_guard.generator.errors import GuardError
from ddpm_guard.watermark.attacks import attack_layer
from ddpm_guard.watermark.guided.guidance import guided_marks
from ddpm_guard.watermark.guided.config import TrainConfig
from ddpm_guard.watermark.guided.nets import DecoderConfig, MessageDecoder, MessageEncoder, load_decoder, save_decoder


def train_decoder(out_dir: str | Path, cfg: TrainConfig = TrainConfig(), dcfg: DecoderConfig = DecoderConfig(),
                  log=print) -> Path:
    """Jointly train encoder and decoder on the training digits (mnist5k train split) through the attack
    layer; save the decoder (safetensors + JSON). The encoder is kept beside it for the benches."""
    from ddpm_guard.generator.checkpoint import default_device
    from ddpm_guard.generator.data import load_dataset
    from safetensors.torch import save_file

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    device = default_device()
    data = load_dataset("mnist5k", "train").images
    dec, enc = MessageDecoder(dcfg).to(device), MessageEncoder(dcfg).to(device)
    opt = torch.optim.Adam(list(dec.parameters()) + list(enc.parameters()), lr=cfg.lr)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0, hist, acc = time.time(), [], []
    for step in range(1, cfg.steps + 1):
        lr = cfg.lr * min(1.0, step / 200) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        x = data[torch.randint(0, len(data), (cfg.batch_size,), generator=gen)]
        bits = torch.randint(0, 2, (cfg.batch_size, dcfg.bits), generator=gen)
        # curriculum (HiDDeN-style training stalls at chance otherwise): attacks and the image penalty
        # ramp in over the first 10-40 % of the run, after the pair has found a code on clean images
        ramp = min(1.0, max(0.0, (step / cfg.steps - 0.1) / 0.3))
        marked = enc(x.to(device), bits.to(device), cfg.strength)
        attacked = attack_layer(marked.cpu(), gen, 1 - ramp * (1 - cfg.identity_share)).to(device)
        logits = dec(attacked)
        target = 1.0 - bits.float().to(device)  # positive logit = bit 0
        loss_msg = F.binary_cross_entropy_with_logits(logits, target)
        loss_img = ((marked - x.to(device)) ** 2).mean()
        loss = loss_msg + ramp * cfg.image_weight * loss_img
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        acc.append(float(((logits > 0).float() == target).float().mean()))
        if step % 200 == 0 or step == cfg.steps:
            row = {"step": step, "bit_accuracy": float(np.mean(acc)), "loss_msg": loss_msg.item(),
                   "rms": float(loss_img.detach().sqrt()), "ramp": ramp, "minutes": (time.time() - t0) / 60}
            hist.append(row)
            log(json.dumps(row))
            acc.clear()
            save_decoder(out, dec, {"train": asdict(cfg), "history": hist})
            save_file({k: v.detach().cpu().contiguous() for k, v in enc.state_dict().items()},
                      str(out / "encoder.safetensors"))
        if cfg.max_minutes is not None and time.time() - t0 > cfg.max_minutes * 60:
            log(f"stopping at step {step}: max_minutes reached")
            save_decoder(out, dec, {"train": asdict(cfg), "history": hist})
            break
    return out


def make_marks(n: int, out: str | Path, *, seed: int = 50_000, chunk: int = 128, start: int = 0,
               decoder: str | None = None, log=print) -> Path:
    """guided_marks to `out` (safetensors: images, chips)."""
    from safetensors.torch import save_file

    images, chips = guided_marks(n, seed=seed, chunk=chunk, start=start, decoder=decoder, log=log)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_file({"images": images.contiguous(), "chips": chips.contiguous()}, str(out),
              metadata={"seed": str(seed), "start": str(start), "n": str(n)})
    return Path(out)


def load_marks(paths: list[str | Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """The (images, chips) of one or more make_marks files, concatenated in order."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    xs, cs = [], []
    for p in paths:
        try:
            d = load_file(str(p))
            xs.append(d["images"].float())
            cs.append(d["chips"].float())
        except (OSError, SafetensorError, KeyError) as e:
            raise GuardError(f"{p}: not a marks file from `ddpm-guard weights reader make` ({e})") from None
    return torch.cat(xs), torch.cat(cs)


def train_reader(marks: list[str | Path], out: str | Path, *, steps: int = 3000, batch_size: int = 64,
                 lr: float = 3e-4, identity_share: float = 0.15, max_aspect: float = 4 / 3, seed: int = 0,
                 decoder: str | None = None, log=print) -> dict:
    """Fine-tune a copy of the decoder guidance steers (the bundled one by default) to read each mark's chips
    (binary cross-entropy) through the attack layer (crops with an aspect ratio up to `max_aspect`); the first
    tenth of the marks is held out to report the bit accuracy, clean and attacked. Writes a plain decoder folder to
    `out` (watermark.guided.nets.set_reader attaches it)."""

    x, c = load_marks(marks)
    dec, record = load_decoder(decoder)
    member = dec.embed
    if c.shape[1] != member.config.bits:
        raise GuardError(f"the marks carry {c.shape[1]} chips; the decoder reads {member.config.bits}")
    torch.manual_seed(seed)
    n_val = max(64, len(x) // 10)
    xv, cv, xt, ct = x[:n_val], c[:n_val], x[n_val:], c[n_val:]
    reader = member.requires_grad_(True).train()
    opt = torch.optim.AdamW(reader.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.05)
    g = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def held_out() -> tuple[float, float]:
        reader.eval()
        xa = attack_layer(xv, torch.Generator().manual_seed(11), identity_share=0.0, max_aspect=max_aspect)
        acc = tuple(float(((reader(v) > 0).float() * 2 - 1 == cv).float().mean()) for v in (xv, xa))
        reader.train()
        return acc

    start = held_out()
    log(f"held-out bit accuracy before (clean, attacked): {start}")
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(0, len(xt), (batch_size,), generator=g)
        xa = attack_layer(xt[idx], g, identity_share=identity_share, max_aspect=max_aspect).detach()
        loss = F.binary_cross_entropy_with_logits(reader(xa), (ct[idx] + 1) / 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 500 == 0 or step + 1 == steps:
            log(f"step {step + 1} loss {loss.item():.4f} held-out (clean, attacked) {held_out()} "
                f"{time.time() - t0:.0f}s")
    reader.eval().requires_grad_(False)
    info = {"marks": [str(p) for p in marks], "n_marks": len(x), "held_out": n_val, "steps": steps,
            "batch_size": batch_size, "lr": lr, "identity_share": identity_share, "max_aspect": max_aspect,
            "seed": seed, "from": str(decoder or "bundled"),
            "bit_accuracy_before": start,
            "bit_accuracy_after": held_out()}
    keep = {k: v for k, v in record.items() if k not in ("decoder", "calibration", "read_views", "view_weights",
                                                         "reader", "members")}
    Path(out).mkdir(parents=True, exist_ok=True)
    save_decoder(Path(out), reader, {**keep, "reader_training": info})
    return info
