"""Generating marked images: which marks an output carries is one explicit MarkSpec.

The x_T mark (watermark.latent) always: it costs no quality and is read by inversion. The guided mark
(watermark.guided) when the spec asks for it: it survives edits and is read without inversion, at a visible cost in
quality, so it is opt-in (BENCHMARKS.md). A spec that asks for the guided mark on a model whose images its decoder
cannot read is refused before any sampling. Watermarked generation is deterministic DDIM (eta = 0), so that the
inversion can find x_T.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ddpm_guard.generator.errors import GuardError
from ddpm_guard.watermark.guided.guidance import codewords_hook
from ddpm_guard.watermark.guided.read import require_guided
from ddpm_guard.watermark.guided.scheme import GuidedScheme, codeword
from ddpm_guard.watermark.keys import WatermarkKey
from ddpm_guard.watermark.latent.codec import Codec, Scheme, watermarked_noise


@dataclass(frozen=True)
class MarkSpec:
    """Which marks a generation writes, and how."""
    latent: Scheme = Scheme()  # the x_T mark's scheme: always written
    guided: GuidedScheme | None = None  # the guided mark's scheme; None: no guided mark
    decoder: str | None = None  # the decoder folder guidance steers toward (None: the bundled one)

    @classmethod
    def of(cls, guided: bool = False, decoder: str | None = None) -> "MarkSpec":
        """The shipped configuration: the x_T mark, plus the guided mark toward `decoder` (None: the bundled one)
        when `guided`; without the guided mark no decoder is involved."""
        return cls(guided=GuidedScheme() if guided else None, decoder=decoder if guided else None)


def parse_payload(text: str | None, scheme: Scheme = Scheme()) -> int:
    if text is None or text == "":
        return 0
    t = text.lower().removeprefix("0x")
    try:
        v = int(t, 16)
    except ValueError:
        raise GuardError(f"--payload {text!r} is not hexadecimal") from None
    if v >= 2 ** scheme.payload_bits:
        raise GuardError(f"--payload {text!r} does not fit in {scheme.payload_bits} bits")
    return v


def _require_deterministic(kw: dict) -> None:
    if kw.get("sampler", "ddim") != "ddim" or kw.get("eta", 0.0) != 0.0:
        raise GuardError("watermarked generation needs the deterministic DDIM sampler (--sampler ddim --eta 0)")


def generate_marked(model: torch.nn.Module, schedule, key: WatermarkKey, payload: int, n: int,
                    spec: MarkSpec = MarkSpec(), *, seed: int = 0, **kw) -> tuple[torch.Tensor, torch.Tensor | None]:
    """n images under one key and payload, marked as `spec` says; `kw` goes to generator.pipeline.generate."""
    from ddpm_guard.generator.pipeline import generate

    _require_deterministic(kw)
    cfg = model.config
    codec = Codec(key, (cfg.in_channels, cfg.image_size, cfg.image_size), spec.latent)
    x_T = watermarked_noise(codec, payload, n, torch.Generator().manual_seed(seed))
    hook = None
    if spec.guided is not None:
        require_guided(codec.shape, spec.decoder)
        hook = codewords_hook(codeword(key, payload, spec.guided)[None], spec.guided, spec.decoder, seed)
    return generate(model, schedule, n, x_T=x_T, seed=seed, x0_hook=hook, **kw)


def generate_under_keys(model: torch.nn.Module, schedule, keys: list[WatermarkKey], payload: int, spec: MarkSpec, *,
                        seed: int = 0, **kw) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One marked image per key, all in one sampling batch: image i carries keys[i]'s marks, its x_T drawn as
    `generate_marked(..., n=1, seed=seed + i)` draws it (labels spread over the classes). What evaluating false
    attributions needs: many keys, one mark each, without one run per key."""
    from ddpm_guard.generator.pipeline import generate

    _require_deterministic(kw)
    cfg = model.config
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    x_T = torch.cat([watermarked_noise(Codec(k, shape, spec.latent), payload, 1, torch.Generator().manual_seed(seed + i))
                     for i, k in enumerate(keys)])
    hook = None
    if spec.guided is not None:
        require_guided(shape, spec.decoder)
        hook = codewords_hook(torch.stack([codeword(k, payload, spec.guided) for k in keys]), spec.guided, spec.decoder,
                              seed)
    return generate(model, schedule, len(keys), x_T=x_T, seed=seed, x0_hook=hook, batch_size=len(keys), **kw)
