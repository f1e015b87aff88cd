"""Detection: image -> resize -> DDIM inversion -> weighted sign statistic -> exact p-value -> payload.

Each chip c_i = +1 when the inverted coefficient's sign, with the key stream removed, reads 0. It
gets an integer weight w_i from the rank of the coefficient's magnitude in its image (soft
decoding: large coefficients kept their sign more often). For one nonce the statistic is
T = sum_j |G_j| + P, with G_j = sum of w_i c_i over the r chips of message bit j (the payload is
unknown, so either sign counts) and P the same sum over the pad chips (known zeros). Under H0 (the
image does not carry this key's mark) the key stream is independent of the image, so given the
image every c_i is a fair sign and T has an exact null law: a convolution over the image's own
weights. The p-value is its upper tail; testing N nonces and M geometric candidates is corrected
with Sidak, 1 - (1 - p)^(N M). With equal weights (Scheme.weight_levels = 1) this is the plain
sign-agreement test. Nothing here mutates shared state.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

from ddpm_guard.generator.image_io import fit_to
from ddpm_guard.generator.microbatch import in_fixed_batches
from ddpm_guard.generator.perturb import rotate
from ddpm_guard.generator.samplers import ddim_invert
from ddpm_guard.watermark.latent.codec import Codec
from ddpm_guard.watermark.pvalues import sidak


# images per inversion call, fixed (generator.microbatch), so a p-value never depends on the batch: 8 keeps 77-83 % of
# the best throughput while one image alone pays for 8, not 32 (BENCHMARKS.md, "Batch invariance")
INVERT_BATCH = 8


P_FLOOR = 1e-300  # float64 tail probabilities below this print as this


def chip_weights(magnitude: np.ndarray, levels: int) -> np.ndarray:
    """Integer weights 1..levels from each chip's rank by |coefficient| within its image.

    A coefficient far from zero after inversion kept its sign more often than one near zero, so it
    should count for more (soft decoding). Ranks make the weights scale-free, and integers keep the
    null law exact. levels = 1 gives equal weights: the plain sign-agreement test."""
    if levels == 1:
        return np.ones(len(magnitude), dtype=np.int64)
    rank = np.empty(len(magnitude), dtype=np.int64)
    rank[np.argsort(magnitude, kind="stable")] = np.arange(len(magnitude))
    return 1 + (rank * levels) // len(magnitude)


def _signed_sum_pmf(w: np.ndarray) -> np.ndarray:
    """pmf of sum_i s_i w_i over fair signs s_i, on the values -W .. W (W = sum w)."""
    pmf = np.array([1.0])
    for wi in w.tolist():
        nxt = np.zeros(len(pmf) + 2 * wi)
        nxt[: len(pmf)] += 0.5 * pmf
        nxt[2 * wi:] += 0.5 * pmf
        pmf = nxt
    return pmf


def null_survival(w: np.ndarray, L: int, r: int) -> tuple[np.ndarray, int]:
    """Exact null law of T = sum_j |G_j| + P, where G_j = sum of the r weighted chips of message bit j
    and P = the sum of the weighted pad chips, each chip a fair sign under H0. Returns (sf, offset)
    with sf[t + offset] = P(T >= t) (float64)."""
    total = np.array([1.0])
    for j in range(L):
        g = _signed_sum_pmf(w[j * r:(j + 1) * r])
        W = (len(g) - 1) // 2
        folded = np.concatenate([[g[W]], g[W + 1:] + g[W - 1::-1]])  # pmf of |G_j| on 0 .. W
        total = np.convolve(total, folded)
    pad = _signed_sum_pmf(w[L * r:])
    total = np.convolve(total, pad)
    sf = np.minimum(np.cumsum(total[::-1])[::-1], 1.0)
    return sf, (len(pad) - 1) // 2


@lru_cache(maxsize=16)
def _equal_weight_null(L: int, r: int, pad: int) -> tuple[np.ndarray, int]:
    return null_survival(np.ones(L * r + pad, dtype=np.int64), L, r)


@dataclass
class Reading:
    """What one latent says about one key: statistic, p-value, decoded message."""
    p_value: float  # for the best nonce, before any correction
    statistic: int
    nonce: int
    message: np.ndarray  # decoded message bits (payload + tag)
    errors_corrected: int  # chips outvoted by the majority in the message groups


def read_latent(codec: Codec, x_T: torch.Tensor, levels: int | None = None) -> list[Reading]:
    """Score (B, C, H, W) inverted latents against every nonce of the key; keep the best nonce.
    `levels` sets the chip weights (chip_weights); default: the scheme's."""
    L, r, pad = codec.scheme.message_bits, codec.reps, codec.pad
    levels = codec.scheme.weight_levels if levels is None else levels
    coeffs = codec.to_coeffs(x_T).reshape(len(x_T), -1)[:, codec.perm]  # (B, D) in chip order
    signs = torch.where(coeffs >= 0, 1, -1).to(torch.int64)
    streams = codec.streams.to(torch.int64)  # (N, D)
    out = []
    for yi, mag in zip(signs, coeffs.abs().numpy()):
        w = chip_weights(mag, levels)
        sf, off = _equal_weight_null(L, r, pad) if levels == 1 else null_survival(w, L, r)
        c = yi[None] * streams  # (N, D): +1 where the chip reads 0 (sigma(u) = +1)
        wc = c * torch.from_numpy(w)[None]
        g = wc[:, : L * r].reshape(-1, L, r).sum(-1)  # (N, L) weighted votes per message bit
        stat = g.abs().sum(-1) + wc[:, L * r:].sum(-1)  # (N,)
        n = int(stat.argmax())
        t = int(stat[n]) + off
        # randomised tail P(T > t) + U P(T = t): exactly uniform under H0 (a discrete statistic's plain
        # tail is conservative). U is a hash of the read signs, so the same image gives the same p.
        u = int.from_bytes(hashlib.sha256(yi.to(torch.int8).numpy().tobytes()).digest()[:8], "big") / 2.0**64
        p = float(sf[t + 1] + u * (sf[t] - sf[t + 1])) if t + 1 < len(sf) else float(u * sf[t])
        bits = (g[n] < 0).to(torch.int8).numpy()  # weighted majority: negative sum -> bit 1
        chips = c[n, : L * r].reshape(L, r)
        corrected = int((chips != torch.from_numpy(1 - 2 * bits.astype(np.int64))[:, None]).sum())
        out.append(Reading(max(p, P_FLOOR), int(stat[n]), n, bits, corrected))
    return out


@dataclass
class Verdict:
    watermarked: bool
    p_value: float  # corrected for every nonce and candidate tested
    payload: str | None  # hex, when the keyed tag confirms it
    payload_valid: bool
    bit_errors_corrected: int
    candidate: str  # which synchronisation candidate matched best ("identity" when none was needed)
    extra: dict = field(default_factory=dict)
    key_label: str | None = None  # which key of a ring matched best (None for a single Codec)


def rotation_candidates(step: float = 7.5, max_angle: float = 90.0) -> list[tuple[str, float]]:
    angles = [a for a in np.arange(-max_angle, max_angle + 1e-9, step) if abs(a) > 1e-9]
    return [("identity", 0.0)] + [(f"rotate({-a:+g})", float(a)) for a in sorted(angles, key=abs)]


def verify(images: torch.Tensor, codec: Codec | dict[str, Codec], model: torch.nn.Module, schedule, *,
           alpha: float = 0.01, steps: int = 10, search: bool = False, rotation_step: float = 7.5) -> list[Verdict]:
    """Verify (B, C, H, W) images in [-1, 1] against one key's Codec or a key ring {label: Codec}.

    The DDIM inversion does not depend on the key, so it runs once per image (and candidate) and
    every key of the ring reads the same latent; the correction counts every nonce of every key. With
    `search`, images not detected as they are get a second pass under inverse rotations; the
    correction counts every candidate of that search, so the false-positive rate stays at alpha
    whether or not the second pass runs. The inversion runs in fixed micro-batches (INVERT_BATCH), so an
    image's p-value never depends on which images it was verified with."""
    ring = codec if isinstance(codec, dict) else {None: codec}
    codecs = list(ring.values())
    x = fit_to(images, codecs[0].shape)
    cands = rotation_candidates(rotation_step) if search else [("identity", 0.0)]
    m = sum(c.scheme.num_nonces for c in codecs) * len(cands)
    best: list[tuple[float, Reading, str, str | None]] = [(2.0, None, "", None)] * len(x)  # type: ignore[list-item]
    todo = list(range(len(x)))
    for name, angle in cands:
        if not todo:
            break
        batch = x[todo] if angle == 0 else rotate(x[todo], angle)
        lat = in_fixed_batches(lambda b: ddim_invert(model, schedule, b, steps).cpu(), batch, INVERT_BATCH)
        for label, c in ring.items():
            for i, rd in zip(todo, read_latent(c, lat)):
                if rd.p_value < best[i][0]:
                    best[i] = (rd.p_value, rd, name, label)
        # stop early once the image is detected at the fully corrected level (the decision is the same)
        todo = [i for i in todo if sidak(best[i][0], m) >= alpha]
    out = []
    for p, rd, name, label in best:
        p_adj = sidak(p, m)
        payload, valid = decode_payload(ring[label], rd.message)
        out.append(Verdict(p_adj < alpha, p_adj, payload if valid else None, valid, rd.errors_corrected, name,
                           {"decoded_payload": payload}, label))
    return out


def decode_payload(codec: Codec, bits: np.ndarray) -> tuple[str, bool]:
    s = codec.scheme
    pbits, tbits = bits[: s.payload_bits], bits[s.payload_bits:]
    value = int("".join(map(str, pbits.tolist())), 2)
    pbytes = value.to_bytes((s.payload_bits + 7) // 8, "big")
    return f"{value:0{(s.payload_bits + 3) // 4}x}", bool(np.array_equal(codec.key.tag(pbytes, s.tag_bits), tbits))
