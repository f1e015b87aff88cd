"""Watermark v2: a keyed codeword put into the image by the reverse process itself and read back by the
robust decoder (watermark.decoder), with no inversion.

Embedding (Gesny et al. 2025, "Guidance watermarking for diffusion models"): at each DDIM step with
t <= start, the model's clean estimate x0 takes a few normalised gradient steps on a hinge loss that
asks the decoder to read the codeword from attacked copies of x0 (the attack layer's real
operations, averaged: expectation over transformations); the step then continues from the edited
x0. The last step outputs the edited x0 itself.

The codeword (72 chips): 32 keyed zero-bit chips, the 32-bit payload and its 8-bit keyed tag, all
XORed with a key stream, so without the key the chips look like fair coins whatever the payload.

Verification: the decoder's logits, centred per chip by medians measured on unmarked images (stored
with the decoder: a property of the decoder, not of any key), give one hard chip each. Under H0 (not
this key's mark) the key's zero-bit chips are independent of the image, so the signed agreement
S = sum_j s_j u_j has mean 0 and variance s' C s, with C the chips' second moments on unmarked
images (clean and attacked, also stored with the decoder); the p-value is its normal tail, the
lattice step spread by a hash of the read chips. The chips are correlated, so the plain binomial
law (also available) is off for any one key. The payload is read from the next 40 chips and is
valid when its keyed tag matches.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from generator.errors import GuardError
from watermark.decoder import MessageDecoder, attack_layer, dilate, load_decoder, stroke_mask
from watermark.keys import WatermarkKey


@dataclass(frozen=True)
class GuidedScheme:
    zero_bits: int = 32  # keyed chips known to the verifier: the zero-bit test
    payload_bits: int = 32
    tag_bits: int = 8
    start: int = 300  # guide the DDIM steps with t <= start (WaDiff trains its loss for t <= 400)
    iters: int = 2  # gradient steps on x0 per guided DDIM step
    # rms of each step on x0, in [-1, 1] pixel units. Measured on the development key (first decoder, n = 200):
    # 0.02 -> mean TPR over clean + the six attacks 0.55 at 36 dB PSNR; 0.05 -> 0.72 at 28 dB, class accuracy 1.0
    step_size: float = 0.05
    eot: int = 4  # attacked copies of x0 averaged per gradient
    # the copies' attacks, comma-separated names from watermark.decoder.ATTACK_NAMES, one per copy (strengths stay
    # random); None draws each copy's attack as the decoder's training did (identity for one copy in eot)
    eot_kinds: str | None = None
    margin: float = 3.0  # hinge: a chip stops pulling once its centred logit agrees by this much
    # zero-bit test. "sign": the agreement count over its null standard deviation for this key, from the chips'
    # covariance on unmarked images (calibration); "binomial": chips taken as fair independent coins. The chips
    # are correlated, so for a fixed key the binomial's false-positive rate at alpha 1 % ranged 0.14-8.1 % over
    # 30 keys (17 outside [0.5, 1.5] %), the covariance-aware one 0.52-1.24 % (measured on the first decoder's
    # training negatives). A soft statistic on standardised logits alone was measured and dropped: a strong mark
    # under another key inflates its variance, 22 % false positives after JPEG q25.
    # "soft" (the default wherever the calibration has its moments): the chips standardised, divided by their rms
    # over the image (which removes that inflation) and clipped (soft_chips), projected on the key's signs over
    # their null sd for this key; per copy, the best kept as "sign-max" does. Development key, four views: mean TPR
    # over clean + the six attacks 0.766 (sign-max) -> 0.840, false positives 0.68-1.1 % (BENCHMARKS.md).
    # "sign-max" (for an ensemble or views): each copy's sign test, the best Sidak-corrected or by view weights.
    # None: the decoder's own (Calibration.statistic)
    statistic: str | None = None
    # edit only the strokes and a one-pixel rim (x0 above this level, dilated); None edits everywhere. Measured on
    # the development key: everywhere paints a faint grey texture over the black background (FID 208 against 40
    # plain, n = 300); strokes only keeps less of the mark (mean TPR 0.67 -> 0.18) and still costs FID (112 against
    # 61, n = 100), because the bundled decoder learned from an encoder that wrote everywhere
    stroke_level: float | None = None
    stroke_ceiling: float | None = None  # with stroke_level: leave the saturated cores (above this level) alone too
    # edit x0 by a smooth local dilation on this grid (watermark.decoder.dilate: stroke edges move along their
    # normals; step_size is then in pixels) instead of a free residual; for a decoder trained the same way
    dilate_grid: int | None = None

    @property
    def bits(self) -> int:
        return self.zero_bits + self.payload_bits + self.tag_bits


def codeword(key: WatermarkKey, payload: int, scheme: GuidedScheme = GuidedScheme()) -> torch.Tensor:
    """(bits,) chips in {+1, -1} (+1 = a positive centred logit) for one key and payload."""
    if not 0 <= payload < 2 ** scheme.payload_bits:
        raise GuardError(f"payload must fit in {scheme.payload_bits} bits")
    pbytes = payload.to_bytes((scheme.payload_bits + 7) // 8, "big")
    pbits = np.unpackbits(np.frombuffer(pbytes, dtype=np.uint8))[-scheme.payload_bits:]
    bits = np.concatenate([key.bits("v2/zero", scheme.zero_bits), pbits, key.tag(pbytes, scheme.tag_bits)])
    bits = bits ^ key.bits("v2/stream", scheme.bits)
    return torch.from_numpy(1.0 - 2.0 * bits.astype(np.float32))


SOFT_CLIP = 1.5  # the soft statistic's clip on each rms-normalised chip (chosen on the development key: 1 -> 0.834,
# 1.5 -> 0.840, 2 -> 0.830, 3 or none -> 0.824 mean TPR over clean + the six attacks; the sign test 0.766)


def soft_chips(logits: torch.Tensor, center: torch.Tensor, mad: torch.Tensor, copies: int,
               clip: float = SOFT_CLIP) -> torch.Tensor:
    """(B, bits * copies) logits -> (B, copies, bits) soft chips: each centred logit over its MAD on unmarked
    images, each copy's chips divided by their rms over the copy (so an image whose chips are all large, a strong
    mark under another key, scores like any other), clipped at +-clip."""
    z = _standardised(logits, center, mad, copies)
    z = z / z.pow(2).mean(2, keepdim=True).sqrt().clamp(min=1e-9)  # over soft_energy
    return z.clamp(-clip, clip)


# the unmarked chip energy's quantile above which the soft test takes the marked null too, when a calibration is
# made with a split (`--energy-split 0.99`). Not in the bundled calibration: on the held-out key (n = 300) it moved
# false positives on unmarked samples from 0.43 % to 0.62 % but on other keys' marks from 1.28 % to 1.64 % (weakly read
# marks under another key fall below the split), for a mean TPR of 0.898 -> 0.902 (BENCHMARKS.md)
ENERGY_QUANTILE = 0.99


def soft_energy(logits: torch.Tensor, center: torch.Tensor, mad: torch.Tensor, copies: int) -> torch.Tensor:
    """(B, bits * copies) logits -> (B, copies): the rms of each copy's standardised chips before soft_chips divides
    it out. It does not depend on any key: a strong mark (under any key) reads high, an unmarked image low."""
    return _standardised(logits, center, mad, copies).pow(2).mean(2).sqrt()


def _standardised(logits: torch.Tensor, center: torch.Tensor, mad: torch.Tensor, copies: int) -> torch.Tensor:
    """(B, bits * copies) logits -> (B, copies, bits): each chip's centred logit over its MAD."""
    return ((logits.double() - center) / mad).view(len(logits), copies, -1)


@dataclass(frozen=True)
class Calibration:
    """The decoder's behaviour on unmarked images (clean and attacked), key-independent: per-chip
    logit medians, and the second moments of the centred chip signs, which give each key's null
    variance of the agreement; and for the soft statistic each chip's MAD and the second moments of the soft
    chips (soft_chips) within each copy."""
    center: torch.Tensor  # (bits * copies,)
    sign_cov: torch.Tensor  # (bits * copies, bits * copies)
    # a decoder read under several views (watermark.decoder.ViewedDecoder): each view's share of alpha; the
    # zero-bit test then keeps the best view (weighted Bonferroni instead of Sidak)
    view_weights: tuple[float, ...] | None = None
    # a decoder with a reader (watermark.reader): the guided decoder's own per-chip medians, which guidance
    # centres its logits by (center and sign_cov are the reader's)
    embed_center: torch.Tensor | None = None
    mad: torch.Tensor | None = None  # (bits * copies,): each chip's median absolute deviation about its center
    soft_cov: torch.Tensor | None = None  # (copies, bits, bits): second moments of the soft chips, per copy
    soft_clip: float = SOFT_CLIP
    # the same second moments on guided marks with random codewords (clean and attacked): a mark under another
    # key is a null too, and its soft chips spread wider than an unmarked image's (evenly large, where an unmarked
    # image's few large chips are clipped). The soft test's null variance for a key is the larger of the two
    soft_cov_marked: torch.Tensor | None = None  # (bits, bits): one matrix, the file view's, bounds every view
    # (copies,): each copy's quantile of the unmarked images' chip energy (soft_energy), if the calibration was made
    # with one. Below it an image reads like an unmarked one and the unmarked null alone applies; at or above it the
    # larger of the two. The energy does not depend on the key. None (the bundled calibration): the larger everywhere
    energy_split: torch.Tensor | None = None

    @property
    def statistic(self) -> str:
        """The zero-bit statistic this decoder is read with when the scheme names none: the soft one where the
        calibration has its moments, else the sign test (the best view's, for a decoder read under views)."""
        if self.soft_cov is not None:
            return "soft"
        return "sign-max" if self.view_weights else "sign"

    @classmethod
    def fit(cls, logits: torch.Tensor, view_weights=None, copies: int = 1, embed_center=None,
            soft_clip: float = SOFT_CLIP, energy_quantile: float | None = None) -> "Calibration":
        """From (N, bits * copies) logits of unmarked images: per-chip medians and MADs, the second moments of the
        centred chip signs (computed in the logits' dtype, then kept as float64), and of the soft chips per copy."""
        center = logits.median(0).values
        signs = 1 - 2 * (logits - center < 0).to(logits.dtype)
        mad = (logits - center).abs().median(0).values.double().clamp(min=1e-6)
        z = soft_chips(logits, center.double(), mad, copies, soft_clip)
        soft_cov = torch.einsum("ncj,nck->cjk", z, z) / len(z)
        split = None
        if energy_quantile is not None:
            split = torch.quantile(soft_energy(logits, center.double(), mad, copies), energy_quantile, dim=0)
        return cls(center.double(), (signs.T @ signs / len(signs)).double(),
                   tuple(view_weights) if view_weights else None, embed_center, mad, soft_cov, soft_clip,
                   energy_split=split)

    def head(self, n: int) -> "Calibration":
        """The calibration of the first n logits (a ViewedDecoder's file view, n one copy's chips)."""
        from dataclasses import replace

        soft = self.soft_cov is not None
        return replace(self, center=self.center[:n], sign_cov=self.sign_cov[:n, :n], view_weights=None,
                       embed_center=None, mad=self.mad[:n] if soft else None, soft_cov=self.soft_cov[:1] if soft else None,
                       energy_split=self.energy_split[:1] if self.energy_split is not None else None)

    def guide_center(self, n: int) -> torch.Tensor:
        """The per-chip medians of the decoder guidance steers (its first n chips)."""
        return (self.center[:n] if self.embed_center is None else self.embed_center).float()


@lru_cache(maxsize=4)
def _decoder(path: str | None) -> tuple[MessageDecoder, Calibration]:
    dec, record = load_decoder(path)
    cal = record.get("calibration")
    if cal is None:
        raise GuardError("the watermark decoder has no calibration; run `python -m watermark.guided --calibrate`")
    weights = record.get("view_weights")

    def opt(k):
        return torch.tensor(cal[k], dtype=torch.float64) if k in cal else None

    return dec, Calibration(opt("center"), opt("sign_cov"), tuple(weights) if weights else None, opt("embed_center"),
                            opt("mad"), opt("soft_cov"), float(cal.get("soft_clip", SOFT_CLIP)), opt("soft_cov_marked"),
                            opt("energy_split"))


def decoder_and_center(path: str | None = None) -> tuple[MessageDecoder, Calibration]:
    """The bundled (or given) decoder and its calibration, loaded once per process."""
    return _decoder(None if path is None else str(path))


def guided_decoder_shape(decoder: str | None = None) -> tuple[int, int, int] | None:
    """The (C, H, W) of the images the decoder reads; None when no decoder is bundled. A damaged folder is a
    GuardError."""
    from watermark.decoder import WEIGHTS

    if decoder is None and not (WEIGHTS / "decoder.json").is_file():
        return None
    cfg = decoder_and_center(decoder)[0].config
    return cfg.channels, cfg.image_size, cfg.image_size


def guided_applies(shape: tuple[int, ...], decoder: str | None = None) -> bool:
    """Whether the decoder reads images of this (C, H, W): the guided mark is only put where it can be read."""
    return guided_decoder_shape(decoder) == tuple(shape)


def require_guided(shape: tuple[int, ...], decoder: str | None = None) -> None:
    """A guided mark asked for where the decoder cannot read it (another image shape, or no decoder bundled):
    one message (GuardError), before any sampling, rather than images carrying only the x_T mark."""
    want = guided_decoder_shape(decoder)
    if want == tuple(shape):
        return

    def words(s: tuple[int, ...]) -> str:
        return f"{s[1]}x{s[2]} {'grey' if s[0] == 1 else 'colour'}"

    which = "the given decoder" if decoder else "the bundled decoder"
    reads = "no decoder is bundled" if want is None else f"{which} reads {words(want)} images"
    raise GuardError(f"the guided mark: {reads} and this model makes {words(shape)}, so it does not read this "
                     "model's images; leave the guided mark out (the x_T mark still goes in) or give a decoder for "
                     "this shape")


def check_scheme(dec: MessageDecoder, scheme: GuidedScheme) -> None:
    if dec.config.bits != scheme.bits:
        raise GuardError(f"the decoder reads {dec.config.bits} chips; the scheme needs {scheme.bits}")
    eot_kinds(scheme)


def eot_kinds(scheme: GuidedScheme) -> torch.Tensor | None:
    """The scheme's fixed attack per guidance copy, as indices into ATTACK_NAMES (None: drawn at random)."""
    from watermark.decoder import ATTACK_NAMES

    if scheme.eot_kinds is None:
        return None
    names = [n.strip() for n in scheme.eot_kinds.split(",")]
    if len(names) != scheme.eot or set(names) - set(ATTACK_NAMES):
        raise GuardError(f"eot_kinds must name {scheme.eot} attacks from {ATTACK_NAMES}; got {scheme.eot_kinds!r}")
    return torch.tensor([ATTACK_NAMES.index(n) for n in names])


def guide_x0(x0: torch.Tensor, chips: torch.Tensor, dec: MessageDecoder, center: torch.Tensor,
             scheme: GuidedScheme, gen: torch.Generator) -> torch.Tensor:
    """A few normalised gradient steps on x0 toward images the decoder reads as `chips` (B, bits) under
    the attack layer; returns the edited x0 in [-1, 1]."""
    dev = x0.device
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(dev.type, enabled=False):
        x = x0.detach().float().clone().cpu()
        c, ctr = chips.cpu(), center.cpu()
        field = None  # the dilation mark's field; x itself stays the base it is applied to
        if scheme.dilate_grid is not None:
            field = x.new_zeros(len(x), 1, scheme.dilate_grid, scheme.dilate_grid)
        mask = None
        if scheme.stroke_level is not None:
            mask = stroke_mask(x, scheme.stroke_level, scheme.stroke_ceiling)
        kinds = eot_kinds(scheme)
        if kinds is not None:
            kinds = kinds.repeat_interleave(len(x))  # x.repeat stacks the copies block by block
        for _ in range(scheme.iters):
            var = (field if field is not None else x).requires_grad_(True)
            img = dilate(x, field) if field is not None else x
            copies = attack_layer(img.repeat(scheme.eot, 1, 1, 1), gen, identity_share=1.0 / scheme.eot, kinds=kinds)
            logits = dec(copies) - ctr
            loss = F.softplus(scheme.margin - c.repeat(scheme.eot, 1) * logits).mean()
            (g,) = torch.autograd.grad(loss, var)
            if mask is not None and field is None:
                g = g * mask
            rms = g.flatten(1).pow(2).mean(1).sqrt().clamp(min=1e-12).view(-1, 1, 1, 1)
            if field is not None:
                field = field.detach() - scheme.step_size * g / rms
            else:
                x = (x.detach() - scheme.step_size * g / rms).clamp(-1, 1)
        if field is not None:
            x = dilate(x, field.detach())
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
    if net is None:
        dec, cal = decoder_and_center(decoder)
        check_scheme(dec, scheme)
        net = dec.embed  # a decoder read under several views is guided through the first (the file itself)
    cw = codewords.float().repeat(1, net.copies)  # every member reads its own copy
    center = cal.guide_center(cw.shape[1]) if center is None else center
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

    from generator.checkpoint import load_model
    from generator.image_io import quantize
    from generator.pipeline import generate

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


@dataclass
class GuidedReading:
    p_value: float  # zero-bit test, uncorrected (one key)
    agreements: int  # of the zero_bits keyed chips: summed over the copies ("sign"), of the copy that counts (else)
    payload: str | None  # hex, when the tag confirms it
    payload_valid: bool
    decoded_payload: str  # hex, whatever the tag says


def zero_bit_test(logits: torch.Tensor, cal: Calibration, key: WatermarkKey,
                  scheme: GuidedScheme = GuidedScheme()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p-values, agreements, read bits (B, bits) with the key stream removed) for (B, bits * copies)
    logits. The "sign" and "binomial" statistics sum every copy's chips, and the payload bits sum the copies'
    centred logits before taking signs. "sign-max" tests each copy on its own and keeps the best, Sidak-corrected
    for the number of copies, and reads the payload from that copy: an ensemble whose members fail under
    different attacks (a pixel-frame and a moment-normalised decoder) then loses nothing to the failing one."""
    from scipy.stats import binom, norm

    z, nb = scheme.zero_bits, scheme.bits
    copies = logits.shape[1] // nb
    statistic = scheme.statistic or cal.statistic
    if logits.shape[1] != len(cal.center):
        raise GuardError(f"{logits.shape[1]} logits per image, but the decoder's calibration has {len(cal.center)}: "
                         "recalibrate it (python -m watermark.guided --calibrate)")
    centred = logits.double() - cal.center
    hard = (centred < 0).numpy().astype(np.uint8)  # chip -1 reads bit 1
    stream, zero = key.bits("v2/stream", nb), key.bits("v2/zero", z)
    zero_idx = np.concatenate([c * nb + np.arange(z) for c in range(copies)])
    agree = (hard[:, zero_idx] == np.tile(zero ^ stream[:z], copies)[None]).sum(1)
    n = z * copies
    # U: a hash of the read chips, so one image always gets one p-value
    u = np.array([int.from_bytes(hashlib.sha256(row.tobytes()).digest()[:8], "big") for row in hard]) / 2.0 ** 64
    if statistic == "binomial":  # randomised tail P(M > m) + U P(M = m): uniform if chips are fair coins
        p = binom.sf(agree, n, 0.5) + u * binom.pmf(agree, n, 0.5)
    elif statistic == "sign":  # the signed agreement over its null sd sqrt(s' C s), spread over its lattice step
        s = torch.from_numpy(np.tile(1.0 - 2.0 * (zero ^ stream[:z]).astype(np.float64), copies))
        sd = float(s @ cal.sign_cov[zero_idx][:, zero_idx] @ s) ** 0.5
        p = norm.sf((2 * agree - n - 1 + 2 * u) / sd)
    elif statistic in ("sign-max", "soft"):
        # each copy tested on its own, the best one kept: Sidak-corrected for the copies, or, for a decoder read under
        # several views, each view's p-value over its weight (weighted Bonferroni). "sign-max" tests each copy's
        # signed agreement; "soft" its soft chips (soft_chips) projected on the key's signs, over their null sd
        s = torch.from_numpy(1.0 - 2.0 * (zero ^ stream[:z]).astype(np.float64))
        if statistic == "soft":
            if cal.soft_cov is None:
                raise GuardError("the decoder's calibration has no soft moments: recalibrate it "
                                 "(python -m watermark.guided --calibrate)")
            soft = soft_chips(logits, cal.center, cal.mad, copies, cal.soft_clip)[:, :, :z]
            # which images also take the marked null: all (no split stored), or those reading above the split
            strong = (np.ones((len(logits), copies), bool) if cal.energy_split is None else
                      (soft_energy(logits, cal.center, cal.mad, copies) >= cal.energy_split).numpy())
        per_copy, agree_c = [], []
        for c in range(copies):
            idx = c * nb + np.arange(z)
            a_c = (hard[:, idx] == (zero ^ stream[:z])[None]).sum(1)
            if statistic == "soft":
                var = np.full(len(logits), float(s @ cal.soft_cov[c, :z, :z] @ s))
                if cal.soft_cov_marked is not None:
                    var[strong[:, c]] = np.maximum(var[strong[:, c]], float(s @ cal.soft_cov_marked[:z, :z] @ s))
                per_copy.append(norm.sf((soft[:, c] @ s).numpy() / np.sqrt(var)))
            else:
                sd = float(s @ cal.sign_cov[idx][:, idx] @ s) ** 0.5
                per_copy.append(norm.sf((2 * a_c - z - 1 + 2 * u) / sd))
            agree_c.append(a_c)
        per_copy = np.stack(per_copy, 1)
        if cal.view_weights:
            if len(cal.view_weights) != copies:
                raise GuardError(f"{len(cal.view_weights)} view weights for {copies} copies of the codeword")
            per_copy = np.minimum(per_copy / np.asarray(cal.view_weights)[None], 1.0)
        best = per_copy.argmin(1)
        p = per_copy.min(1) if cal.view_weights or copies == 1 else sidak(per_copy.min(1), copies)
        agree = np.stack(agree_c, 1)[np.arange(len(best)), best]  # the agreement of the copy that counts, of z
    else:
        raise GuardError(f"unknown watermark statistic {statistic!r}")
    per = centred.view(len(centred), copies, nb)
    # the payload: every copy's centred logits summed, or (sign-max) the copy the zero-bit test found the mark in
    chosen = per[np.arange(len(per)), best] if statistic in ("sign-max", "soft") else per.sum(1)
    bits = (chosen < 0).numpy().astype(np.uint8) ^ stream[None]
    return np.maximum(p, 1e-300), agree, bits


def read_logits(logits: torch.Tensor, cal: Calibration, key: WatermarkKey,
                scheme: GuidedScheme = GuidedScheme()) -> list[GuidedReading]:
    """Score (B, bits * copies) decoder logits against one key: the zero-bit p-value (scheme.statistic)
    and the payload with its tag."""
    p, agree, bits = zero_bit_test(logits, cal, key, scheme)
    z, pb = scheme.zero_bits, scheme.payload_bits
    out = []
    for row, pi, m in zip(bits, p.tolist(), agree.tolist()):
        value = int("".join(map(str, row[z:z + pb].tolist())), 2)
        pbytes = value.to_bytes((pb + 7) // 8, "big")
        valid = bool(np.array_equal(key.tag(pbytes, scheme.tag_bits), row[z + pb:]))
        hexv = f"{value:0{(pb + 3) // 4}x}"
        out.append(GuidedReading(float(pi), int(m), hexv if valid else None, valid, hexv))
    return out


# images per decoder call, fixed (generator.microbatch), so a logit never depends on its batch: 32 was the fastest
# measured (920 images/s against 600 at 64 and 690 at 128; 2-core AVX-512), and one image alone costs 33 ms
DECODE_BATCH = 32


@torch.inference_mode()
def decode_logits(images: torch.Tensor, decoder: str | None = None) -> torch.Tensor:
    """(B, C, H, W) images in [-1, 1] (other sizes are resized) -> (B, bits * copies) logits, on the CPU, in fixed
    micro-batches so that an image's logits are the same whatever it was read with."""
    from generator.image_io import fit_to
    from generator.microbatch import in_fixed_batches

    dec, _ = decoder_and_center(decoder)
    cfg = dec.config
    x = fit_to(images, (cfg.channels, cfg.image_size, cfg.image_size)).float()
    out = in_fixed_batches(dec, x, DECODE_BATCH)
    return out if out is not None else dec(x)


def verify_guided(images: torch.Tensor, key: WatermarkKey, *, alpha: float = 0.01, scheme: GuidedScheme = GuidedScheme(),
                  decoder: str | None = None) -> list[GuidedReading]:
    if not 0 < alpha < 1:
        raise GuardError(f"alpha must be between 0 and 1, got {alpha}")
    _, cal = decoder_and_center(decoder)
    return read_logits(decode_logits(images, decoder), cal, key, scheme)


def sidak(p_min, m: int):
    """The Sidak correction of the smallest of m independent p-values (scalar or array): 1 - (1 - p)^m."""
    p = np.asarray(p_min, dtype=np.float64)
    return np.where(p < 1, -np.expm1(m * np.log1p(-np.minimum(p, 1 - 1e-16))), 1.0)


def combine(p_values: list[float]) -> float:
    """One p-value for 'at least one of these independent tests rejects': Sidak over their minimum."""
    return float(sidak(min(p_values), len(p_values)))


def calibrate(decoder_dir: str, model, schedule, *, n_samples: int = 2000, seed: int = 1000, n_marks: int = 256,
              energy_quantile: float | None = None, log=print) -> dict:
    """Measure the decoder's per-chip logit medians on unmarked images and store them in decoder.json.

    The negatives are the training digits (mnist5k train) and unmarked samples of the generator (seeds
    from 1000 on: apart from every benchmark's), each clean and through the attack layer. The held-out
    digits are not used: the false-positive checks run on them."""
    import json
    from pathlib import Path

    from generator.data import load_dataset
    from generator.fsutil import atomic_write_bytes
    from generator.image_io import quantize
    from generator.pipeline import generate
    from watermark.decoder import load_decoder

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
                          embed.median(0).values.double() if embed is not None else None,
                          energy_quantile=energy_quantile)
    marked_cov = None
    if n_marks:
        # the soft test's other null: guided marks with random codewords (seeds 90,000 on), as made, read in the view
        # they are written for (the file itself). That is the strongest reading a mark gets, so its spread bounds what
        # a mark under another key does in any view (an attacked mark read in the view that undoes the attack)
        from dataclasses import replace

        marks, _ = guided_marks(n_marks, seed=90_000, chunk=128, net=dec.embed,
                                center=cal.guide_center(dec.embed.config.bits), log=log)
        with torch.inference_mode():
            zm = soft_chips(dec(marks), cal.center, cal.mad, dec.copies, cal.soft_clip)[:, 0]
        marked_cov = zm.T @ zm / len(zm)
        cal = replace(cal, soft_cov_marked=marked_cov)
    hard = (logits - cal.center.float() < 0).float()
    record["calibration"] = {"center": cal.center.tolist(), "sign_cov": cal.sign_cov.tolist(),
                             "mad": cal.mad.tolist(), "soft_cov": cal.soft_cov.tolist(), "soft_clip": cal.soft_clip,
                             **({"energy_split": cal.energy_split.tolist(), "energy_quantile": energy_quantile}
                                if energy_quantile is not None else {}),
                             **({"soft_cov_marked": marked_cov.tolist(), "marks": n_marks} if n_marks else {}),
                             **({"embed_center": cal.embed_center.tolist()} if embed is not None else {}),
                             "n": len(logits), "real_train": len(real),
                             "samples": n_samples, "seed": seed,
                             "chip_balance_max_dev": float((hard.mean(0) - 0.5).abs().max())}
    # each statistic's false-positive rate on these same negatives over 20 keys (training data: this picks the
    # default statistic; the held-out check is `watermark eval`)
    keys = [WatermarkKey(hashlib.sha256(f"calibration-key-{i}".encode()).digest()) for i in range(20)]
    for stat in ("binomial", "sign", "soft") + (("sign-max",) if dec.copies > 1 else ()):
        ps = np.concatenate([zero_bit_test(logits, cal, k, GuidedScheme(statistic=stat))[0] for k in keys])
        record["calibration"][f"fpr_{stat}"] = {"alpha_0.01": float((ps < 0.01).mean()),
                                                "alpha_0.001": float((ps < 0.001).mean())}
        log(f"{stat}: FPR {record['calibration'][f'fpr_{stat}']} over 20 keys")
    atomic_write_bytes(Path(decoder_dir) / "decoder.json", json.dumps(record, indent=1).encode())
    _decoder.cache_clear()
    log(f"calibrated on {len(logits)} unmarked images; largest chip imbalance "
        f"{record['calibration']['chip_balance_max_dev']:.3f}")
    return record["calibration"]
