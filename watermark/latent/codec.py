"""Embedding: key + payload -> x_T, exactly N(0, I) in distribution (Gaussian Shading, Yang et al. 2024).

Layout of the D = C*H*W latent dimensions, in a keyed permuted order:
- the message (payload bits + a keyed MAC tag) is repeated r times (r odd, a repetition code);
- the remaining D - L*r "pad" positions carry known zeros (they add to zero-bit detection);
- every chip is XORed with a key stream selected by a random per-image nonce, so the sign pattern
  is uniform whatever the payload, and images from one job do not all share one sign pattern.
x_T = |z| * sign pattern with z ~ N(0, I): a uniform random sign times an independent |z| is
exactly a standard normal, so each image's quality is untouched. "Uniform" is over the key (and
nonce): under one key, the images of one payload share one of 2^nonce_bits sign patterns, which
correlates their x_T (2/pi per coordinate for two images on one stream) and costs diversity.

The chips live in a basis of x_T (Scheme.basis). "dct": the orthonormal 2-D DCT-II of each channel;
x_T = IDCT(|z| * signs) is still exactly N(0, I) because an orthonormal map of iid standard normals
is iid standard normal. It is the default because DCT coefficients survive generation, 8-bit
rounding and inversion better than single pixels on a model whose background saturates (measured
by bench/watermark/sign_survival.py: 0.63 vs 0.57 sign agreement). "pixel": x_T's own entries.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from ddpm_guard.generator.errors import GuardError
from ddpm_guard.watermark.keys import WatermarkKey


@dataclass(frozen=True)
class Scheme:
    payload_bits: int = 32  # room for a job or account id
    tag_bits: int = 8  # keyed MAC over the payload: a wrong decode is flagged with prob. 1 - 2^-8
    # 256 key streams per key. More keeps the x_T of one job's images apart (two images on one stream share
    # every sign: their x_T correlate at 2/pi) but each extra stream is one more test in the Sidak
    # correction. Measured on the bundled model (BENCHMARKS.md, weighted statistic, one key): 16 streams
    # clean TPR 0.94 but FID +4.7 over four seeds (outside the seed spread); 256 streams TPR 0.86, FID
    # within the spread. Sample quality comes first.
    nonce_bits: int = 8
    basis: str = "dct"  # where the chips live: "dct" (orthonormal 2-D DCT of x_T) or "pixel"
    # DCT coefficients left out of the code: row 0, column 0 and the (skip_low+1)^2 lowest block (at 28x28). Their
    # signs are predictable from image content (the DC term of an inverted digit is negative 100 % of
    # the time), which would bias the statistic for a fixed key. They get key-stream signs like the rest.
    skip_low: int = 4
    # detection weights chips by the rank of their inverted magnitude, in this many integer levels (1 = plain
    # sign test). Does not change the embedding, so marks made under any value verify under any other.
    weight_levels: int = 8

    @property
    def message_bits(self) -> int:
        return self.payload_bits + self.tag_bits

    @property
    def num_nonces(self) -> int:
        return 2 ** self.nonce_bits


class Codec:
    """Key-derived streams for one latent shape. Immutable after construction, so safe to share."""

    def __init__(self, key: WatermarkKey, shape: tuple[int, int, int], scheme: Scheme = Scheme()):
        self.key, self.shape, self.scheme = key, tuple(shape), scheme
        if scheme.basis not in ("dct", "pixel"):
            raise GuardError(f"unknown watermark basis {scheme.basis!r}; use 'dct' or 'pixel'")
        self.total = int(np.prod(shape))
        active = np.arange(self.total)
        if scheme.basis == "dct":
            u, v = np.meshgrid(np.arange(shape[-2]), np.arange(shape[-1]), indexing="ij")
            k = min(scheme.skip_low, min(shape[-2:]) // 7)  # 4 at 28x28; scaled down for tiny latents
            low = (u == 0) | (v == 0) | ((u <= k) & (v <= k))
            active = np.flatnonzero(np.broadcast_to(~low, shape).reshape(-1))
        self.dim = len(active)  # the dimensions that carry chips
        L = scheme.message_bits
        r = self.dim // L
        if r % 2 == 0:
            r -= 1  # odd repetition: majority votes never tie
        if r < 1:
            raise GuardError(f"a {shape} latent is too small for a {L}-bit message")
        self.reps, self.pad = r, self.dim - L * r
        # chip i sits at flat position perm[i]: a keyed permutation of the active dimensions
        self.perm = torch.from_numpy(active[key.permutation("perm", self.dim)].copy())
        self._dct_h, self._dct_w = dct_matrix(shape[-2]), dct_matrix(shape[-1])

    def to_latent(self, coeffs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) chip-domain values -> x_T (the inverse DCT, or the identity)."""
        if self.scheme.basis == "pixel":
            return coeffs
        return (self._dct_h.T @ coeffs.double() @ self._dct_w).float()

    def to_coeffs(self, x_T: torch.Tensor) -> torch.Tensor:
        """x_T -> the chip domain (the forward DCT, or the identity)."""
        if self.scheme.basis == "pixel":
            return x_T
        return (self._dct_h @ x_T.double() @ self._dct_w.T).float()

    @cached_property
    def streams(self) -> torch.Tensor:
        """(num_nonces, D) int8 in {+1, -1}: sigma(k) = 1 - 2k for each nonce's key bits."""
        bits = np.stack([self.key.bits(f"chips/{n}", self.dim) for n in range(self.scheme.num_nonces)])
        return torch.from_numpy(1 - 2 * bits.astype(np.int8))

    @cached_property
    def free_signs(self) -> torch.Tensor:
        """(num_nonces, C*H*W) int8 signs for the dimensions that carry no chips (derived once, like streams)."""
        bits = np.stack([self.key.bits(f"free/{n}", self.total) for n in range(self.scheme.num_nonces)])
        return torch.from_numpy(1 - 2 * bits.astype(np.int8))

    def message(self, payload: int) -> np.ndarray:
        s = self.scheme
        if not 0 <= payload < 2 ** s.payload_bits:
            raise GuardError(f"payload must fit in {s.payload_bits} bits (0 to {2 ** s.payload_bits - 1:x} hex)")
        pbytes = payload.to_bytes((s.payload_bits + 7) // 8, "big")
        pbits = np.unpackbits(np.frombuffer(pbytes, dtype=np.uint8))[-s.payload_bits:]
        return np.concatenate([pbits, self.key.tag(pbytes, s.tag_bits)]).astype(np.int8)

    def signs(self, payload: int, nonce: int) -> torch.Tensor:
        """The (C, H, W) sign pattern in {+1, -1} for one payload and nonce."""
        chips = np.zeros(self.dim, dtype=np.int8)
        chips[: self.scheme.message_bits * self.reps] = np.repeat(self.message(payload), self.reps)
        permuted = torch.from_numpy(1 - 2 * chips) * self.streams[nonce]  # sigma(u xor k) = sigma(u) sigma(k)
        # skipped dimensions: uniform key-stream signs that carry nothing, so x_T stays N(0, I) over the key
        out = self.free_signs[nonce].clone()
        out[self.perm] = permuted
        return out.reshape(self.shape)


def dct_matrix(n: int) -> torch.Tensor:
    """The orthonormal DCT-II matrix (n, n) in float64: y = C x, x = C^T y."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None]
    c = torch.cos(torch.pi * (2 * i + 1) * k / (2 * n)) * (2.0 / n) ** 0.5
    c[0] /= 2 ** 0.5
    return c


def watermarked_noise(codec: Codec, payload: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """(n, C, H, W) x_T: |z| times the keyed sign pattern of a random nonce per image."""
    z = torch.randn((n, *codec.shape), generator=generator)
    nonces = torch.randint(0, codec.scheme.num_nonces, (n,), generator=generator)
    signs = torch.stack([codec.signs(payload, int(k)) for k in nonces]).float()
    return codec.to_latent(z.abs() * signs)
