"""A reader for the guided mark, trained on the guided marks themselves (issue 10: "train it ... directly against
guided samples").

The bundled decoder learned from a HiDDeN encoder's marks; guidance then writes whatever that decoder reads, which
is not what the encoder wrote. The reader is a copy of the decoder fine-tuned to read the chips back from real
guided marks through the attack layer. Guidance keeps steering the decoder itself, so the marks, their quality and
their cost do not change; verification reads every view with the reader (watermark.decoder.ViewedDecoder).

The marks carry random codewords (no key is involved) from seeds apart from every evaluation's (50,000 on; the
benchmarks use 0-1,100):

    python -m watermark.reader make --n 5120 --out runs/reader/marks.safetensors    # ~45 min here
    python -m watermark.reader train runs/reader/marks.safetensors --out runs/reader/r --steps 3000 --seed 0
    python -m watermark.decoder --out watermark/weights/decoder --reader runs/reader/r
    python -m watermark.guided --calibrate watermark/weights/decoder --n-samples 500
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from generator.errors import GuardError
from watermark.guided import guided_marks


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
            raise GuardError(f"{p}: not a marks file from `python -m watermark.reader make` ({e})") from None
    return torch.cat(xs), torch.cat(cs)


def train_reader(marks: list[str | Path], out: str | Path, *, steps: int = 3000, batch_size: int = 64,
                 lr: float = 3e-4, identity_share: float = 0.15, max_aspect: float = 4 / 3, seed: int = 0,
                 decoder: str | None = None, attack_weights: dict[str, float] | None = None, log=print) -> dict:
    """Fine-tune a copy of the decoder guidance steers (the bundled one by default) to read each mark's chips
    (binary cross-entropy) through the attack layer (crops with an aspect ratio up to `max_aspect`); the first
    tenth of the marks is held out to report the bit accuracy, clean and attacked. `attack_weights`: relative
    weights of the attack layer's attacks (names from ATTACK_NAMES but identity; 1 for those not named), for the
    share that is attacked. Writes a plain decoder folder to `out` (watermark.decoder.set_reader attaches it)."""
    from watermark.decoder import ATTACK_NAMES, attack_layer, load_decoder, save_decoder

    probs = None
    if attack_weights:
        if set(attack_weights) - set(ATTACK_NAMES[1:]) or min(attack_weights.values()) < 0:
            raise GuardError(f"attack weights name attacks from {ATTACK_NAMES[1:]}, each >= 0; got {attack_weights}")
        w = torch.tensor([attack_weights.get(n, 1.0) for n in ATTACK_NAMES[1:]], dtype=torch.float64)
        if w.sum() <= 0:
            raise GuardError("the attack weights sum to 0")
        probs = torch.cat([torch.tensor([identity_share], dtype=torch.float64), (1 - identity_share) * w / w.sum()])

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
        kinds = None if probs is None else torch.multinomial(probs, batch_size, replacement=True, generator=g)
        xa = attack_layer(xt[idx], g, identity_share=identity_share, max_aspect=max_aspect, kinds=kinds).detach()
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
            "seed": seed, "from": str(decoder or "bundled"), "attack_weights": attack_weights,
            "bit_accuracy_before": start,
            "bit_accuracy_after": held_out()}
    keep = {k: v for k, v in record.items() if k not in ("decoder", "calibration", "read_views", "view_weights",
                                                         "reader", "members")}
    Path(out).mkdir(parents=True, exist_ok=True)
    save_decoder(Path(out), reader, {**keep, "reader_training": info})
    return info
