"""The guided mark's zero-bit test: decoder logits -> a calibrated p-value per key, and the payload with its tag.

The decoder's logits, centred per chip by medians measured on unmarked images (stored with the decoder: a property
of the decoder, not of any key), standardised by their MADs and divided by their rms over the image, give one soft
chip each. Under H0 (not this key's mark) the key's zero-bit chips are independent of the image, so their signed sum
S = sum_j s_j u_j has mean 0 and variance s' C s, with C the soft chips' second moments on unmarked images and on
other keys' marks (clean and attacked; stored with the decoder). The p-value is its normal tail. The payload is read
from the next 40 chips and is valid when its keyed tag matches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ddpm_guard.generator.errors import GuardError
from ddpm_guard.watermark.guided.scheme import GuidedScheme
from ddpm_guard.watermark.keys import WatermarkKey
from ddpm_guard.watermark.pvalues import sidak


SOFT_CLIP = 1.5  # the soft statistic's clip on each rms-normalised chip (chosen on the development key: 1 -> 0.834,


def soft_chips(logits: torch.Tensor, center: torch.Tensor, mad: torch.Tensor, copies: int,
               clip: float = SOFT_CLIP) -> torch.Tensor:
    """(B, bits * copies) logits -> (B, copies, bits) soft chips: each centred logit over its MAD on unmarked
    images, each copy's chips divided by their rms over the copy (so an image whose chips are all large, a strong
    mark under another key, scores like any other), clipped at +-clip."""
    z = _standardised(logits, center, mad, copies)
    z = z / z.pow(2).mean(2, keepdim=True).sqrt().clamp(min=1e-9)  # over the copy's rms
    return z.clamp(-clip, clip)


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

    @classmethod
    def fit(cls, logits: torch.Tensor, view_weights=None, copies: int = 1, embed_center=None,
            soft_clip: float = SOFT_CLIP) -> "Calibration":
        """From (N, bits * copies) logits of unmarked images: per-chip medians and MADs, the second moments of the
        centred chip signs (computed in the logits' dtype, then kept as float64), and of the soft chips per copy."""
        center = logits.median(0).values
        signs = 1 - 2 * (logits - center < 0).to(logits.dtype)
        mad = (logits - center).abs().median(0).values.double().clamp(min=1e-6)
        z = soft_chips(logits, center.double(), mad, copies, soft_clip)
        soft_cov = torch.einsum("ncj,nck->cjk", z, z) / len(z)
        return cls(center.double(), (signs.T @ signs / len(signs)).double(),
                   tuple(view_weights) if view_weights else None, embed_center, mad, soft_cov, soft_clip)

    def head(self, n: int) -> "Calibration":
        """The calibration of the first n logits (a ViewedDecoder's file view, n one copy's chips)."""
        from dataclasses import replace

        soft = self.soft_cov is not None
        return replace(self, center=self.center[:n], sign_cov=self.sign_cov[:n, :n], view_weights=None,
                       embed_center=None, mad=self.mad[:n] if soft else None, soft_cov=self.soft_cov[:1] if soft else None)

    def guide_center(self, n: int) -> torch.Tensor:
        """The per-chip medians of the decoder guidance steers (its first n chips)."""
        return (self.center[:n] if self.embed_center is None else self.embed_center).float()


@dataclass
class GuidedReading:
    p_value: float  # zero-bit test, uncorrected (one key)
    agreements: int  # of the zero_bits keyed chips, in the copy the test kept
    payload: str | None  # hex, when the tag confirms it
    payload_valid: bool
    decoded_payload: str  # hex, whatever the tag says


def zero_bit_test(logits: torch.Tensor, cal: Calibration, key: WatermarkKey,
                  scheme: GuidedScheme = GuidedScheme()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p-values, agreements, read bits (B, bits) with the key stream removed) for (B, bits * copies) logits.

    The soft test: each copy's soft chips (soft_chips) projected on the key's zero-bit signs, over their null sd
    for this key, the larger of the unmarked images' and other keys' marks' (the calibration's two second-moment
    matrices). Each copy is tested on its own and the best kept: Sidak-corrected for the copies, or, for a decoder
    read under several views, each view's p-value over its weight (weighted Bonferroni). The payload is read from
    the copy the test found the mark in. (The binomial, summed-sign and per-copy sign tests were measured and
    dropped: BENCHMARKS.md, "Measured and not shipped".)"""
    from scipy.stats import norm

    z, nb = scheme.zero_bits, scheme.bits
    copies = logits.shape[1] // nb
    if logits.shape[1] != len(cal.center):
        raise GuardError(f"{logits.shape[1]} logits per image, but the decoder's calibration has {len(cal.center)}: "
                         "recalibrate it (ddpm-guard weights decoder calibrate)")
    if cal.soft_cov is None:
        raise GuardError("the decoder's calibration has no soft moments: recalibrate it "
                         "(ddpm-guard weights decoder calibrate)")
    centred = logits.double() - cal.center
    hard = (centred < 0).numpy().astype(np.uint8)  # chip -1 reads bit 1
    stream, zero = key.bits("v2/stream", nb), key.bits("v2/zero", z)
    s = torch.from_numpy(1.0 - 2.0 * (zero ^ stream[:z]).astype(np.float64))
    soft = soft_chips(logits, cal.center, cal.mad, copies, cal.soft_clip)[:, :, :z]
    per_copy, agree_c = [], []
    for c in range(copies):
        idx = c * nb + np.arange(z)
        agree_c.append((hard[:, idx] == (zero ^ stream[:z])[None]).sum(1))
        var = np.full(len(logits), float(s @ cal.soft_cov[c, :z, :z] @ s))
        if cal.soft_cov_marked is not None:  # a mark under another key is a null too
            var = np.maximum(var, float(s @ cal.soft_cov_marked[:z, :z] @ s))
        per_copy.append(norm.sf((soft[:, c] @ s).numpy() / np.sqrt(var)))
    per_copy = np.stack(per_copy, 1)
    if cal.view_weights:
        if len(cal.view_weights) != copies:
            raise GuardError(f"{len(cal.view_weights)} view weights for {copies} copies of the codeword")
        per_copy = np.minimum(per_copy / np.asarray(cal.view_weights)[None], 1.0)
    best = per_copy.argmin(1)
    p = per_copy.min(1) if cal.view_weights or copies == 1 else sidak(per_copy.min(1), copies)
    agree = np.stack(agree_c, 1)[np.arange(len(best)), best]  # the agreement of the copy that counts, of z
    per = centred.view(len(centred), copies, nb)
    bits = (per[np.arange(len(per)), best] < 0).numpy().astype(np.uint8) ^ stream[None]
    return np.maximum(p, 1e-300), agree, bits


def read_logits(logits: torch.Tensor, cal: Calibration, key: WatermarkKey,
                scheme: GuidedScheme = GuidedScheme()) -> list[GuidedReading]:
    """Score (B, bits * copies) decoder logits against one key: the zero-bit p-value (the soft test)
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
