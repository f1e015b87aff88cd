"""Watermark v2: a keyed codeword put into the image by the reverse process itself and read back by the
robust decoder (watermark.guided.nets), with no inversion.

Embedding (Gesny et al. 2025, "Guidance watermarking for diffusion models"): at each DDIM step with
t <= start, the model's clean estimate x0 takes a few normalised gradient steps on a hinge loss that
asks the decoder to read the codeword from attacked copies of x0 (the attack layer's real
operations, averaged: expectation over transformations); the step then continues from the edited
x0. The last step outputs the edited x0 itself.

The hooks plug into the sampler's `x0_hook` (generator.samplers): `make_hook` for one key's codeword, `codewords_hook`
for one codeword per image; `guided_marks` makes marks with random codewords (the reader's training data and the
calibration's marked null).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ddpm_guard.generator.errors import GuardError
from ddpm_guard.watermark.attacks import attack_layer
from ddpm_guard.watermark.guided.nets import MessageDecoder
from ddpm_guard.watermark.guided.read import decoder_and_center
from ddpm_guard.watermark.guided.scheme import GuidedScheme, check_scheme, codeword
from ddpm_guard.watermark.keys import WatermarkKey


def guide_x0(x0: torch.Tensor, chips: torch.Tensor, dec: MessageDecoder, center: torch.Tensor,
             scheme: GuidedScheme, gen: torch.Generator) -> torch.Tensor:
    """A few normalised gradient steps on x0 toward images the decoder reads as `chips` (B, bits) under
    the attack layer; returns the edited x0 in [-1, 1]."""
    dev = x0.device
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(dev.type, enabled=False):
        x = x0.detach().float().clone().cpu()
        c, ctr = chips.cpu(), center.cpu()
        for _ in range(scheme.iters):
            x.requires_grad_(True)
            copies = attack_layer(x.repeat(scheme.eot, 1, 1, 1), gen, identity_share=1.0 / scheme.eot)
            logits = dec(copies) - ctr
            loss = F.softplus(scheme.margin - c.repeat(scheme.eot, 1) * logits).mean()
            (g,) = torch.autograd.grad(loss, x)
            rms = g.flatten(1).pow(2).mean(1).sqrt().clamp(min=1e-12).view(-1, 1, 1, 1)
            x = (x.detach() - scheme.step_size * g / rms).clamp(-1, 1)
    return x.to(dev, x0.dtype)


def make_hook(key: WatermarkKey, payload: int, scheme: GuidedScheme = GuidedScheme(),
              decoder: str | None = None, seed: int = 0):
    """The sampler's x0 hook (generator.samplers.sample's `x0_hook`) that guides every image of a run
    toward one key's codeword for `payload`."""
    return codewords_hook(codeword(key, payload, scheme)[None], scheme, decoder, seed)


def codewords_hook(codewords: torch.Tensor, scheme: GuidedScheme = GuidedScheme(), decoder: str | None = None,
                   seed: int = 0, *, net=None, center: torch.Tensor | None = None):
    """An x0 hook that guides image i toward codewords[i] ((B, bits) chips from `codeword`), or every image
    toward codewords[0] when it holds one row: marks under many keys in one batch (the sampler must then run
    the B images as one batch). `net` and `center`: the network guidance steers and its chip medians, for a
    decoder not calibrated yet (default: the decoder folder's)."""
    if net is None or center is None:
        dec, cal = decoder_and_center(decoder)
    if net is None:
        check_scheme(dec, scheme)
        net = dec.embed  # a decoder read under several views is guided through the first (the file itself)
    cw = codewords.float().repeat(1, net.copies)  # every member reads its own copy
    if center is None:
        center = cal.guide_center(cw.shape[1])
    gen = torch.Generator().manual_seed(seed + 7919)

    def hook(x0: torch.Tensor, t: int) -> torch.Tensor:
        if t > scheme.start:
            return x0
        if len(cw) not in (1, len(x0)):
            raise ValueError(f"{len(cw)} codewords for a batch of {len(x0)} images")
        return guide_x0(x0, cw.expand(len(x0), -1), net, center, scheme, gen)

    return hook


def guided_marks(n: int, *, seed: int = 50_000, chunk: int = 128, start: int = 0, decoder: str | None = None,
                 net=None, center: torch.Tensor | None = None, log=print) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, chips): marks n[start:] of n guided marks, each with its own random codeword, as `sample
    --guided-mark` makes them (DDIM 50 steps, the default GuidedScheme, 8-bit). `start` skips the marks an earlier
    run made (their chips are still drawn, so the rest come out the same as in one run). `net` and `center`: as for
    `codewords_hook`. The reader trains on them; the calibration's marked null reads them."""
    import time

    from ddpm_guard.generator.checkpoint import load_model
    from ddpm_guard.generator.image_io import quantize
    from ddpm_guard.generator.pipeline import generate

    if n < 1 or chunk < 1 or start % chunk or not 0 <= start < n:
        raise GuardError(f"make needs n >= 1 and a start in [0, n) that is a multiple of the chunk; got n={n}, "
                         f"start={start}, chunk={chunk}")
    model, schedule, _ = load_model(None)
    scheme = GuidedScheme()
    gchips = torch.Generator().manual_seed(seed)
    imgs, chips = [], []
    t0 = time.time()
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        c = 1.0 - 2.0 * torch.randint(0, 2, (m, scheme.bits), generator=gchips).float()
        if i < start:
            continue
        hook = codewords_hook(c, scheme, decoder, seed + i, net=net, center=center)
        x, _ = generate(model, schedule, m, seed=seed + i, steps=50, precision="auto", batch_size=m, x0_hook=hook)
        imgs.append(quantize(x))
        chips.append(c)
        log(f"{i + m}/{n} marks, {(i + m - start) / (time.time() - t0):.1f}/s")
    return torch.cat(imgs), torch.cat(chips)
