"""The decoder in use: loaded once per process with its calibration, the shape it reads, and the logits of images
read in fixed micro-batches (generator.microbatch), so a file's reading never depends on its batch."""

from __future__ import annotations

from functools import lru_cache

import torch

from ddpm_guard.generator.errors import GuardError
from ddpm_guard.generator.image_io import fit_to
from ddpm_guard.generator.microbatch import in_fixed_batches
from ddpm_guard.watermark.guided.nets import WEIGHTS, MessageDecoder, load_decoder
from ddpm_guard.watermark.guided.scheme import GuidedScheme
from ddpm_guard.watermark.guided.statistic import SOFT_CLIP, Calibration, GuidedReading, read_logits
from ddpm_guard.watermark.keys import WatermarkKey


@lru_cache(maxsize=4)
def _decoder(path: str | None) -> tuple[MessageDecoder, Calibration]:
    dec, record = load_decoder(path)
    cal = record.get("calibration")
    if cal is None:
        raise GuardError("the watermark decoder has no calibration; run `ddpm-guard weights decoder calibrate`")
    weights = record.get("view_weights")

    def opt(k):
        return torch.tensor(cal[k], dtype=torch.float64) if k in cal else None

    return dec, Calibration(opt("center"), opt("sign_cov"), tuple(weights) if weights else None, opt("embed_center"),
                            opt("mad"), opt("soft_cov"), float(cal.get("soft_clip", SOFT_CLIP)), opt("soft_cov_marked"))


def decoder_and_center(path: str | None = None) -> tuple[MessageDecoder, Calibration]:
    """The bundled (or given) decoder and its calibration, loaded once per process."""
    return _decoder(None if path is None else str(path))


def forget_decoders() -> None:
    """Drop the loaded decoders (a folder was rewritten: recalibrated, given views or a reader)."""
    _decoder.cache_clear()


def guided_decoder_shape(decoder: str | None = None) -> tuple[int, int, int] | None:
    """The (C, H, W) of the images the decoder reads; None when no decoder is bundled. A damaged folder is a
    GuardError."""
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


# images per decoder call, fixed (generator.microbatch), so a logit never depends on its batch: 32 is within the
# measured spread of the fastest size and one image alone costs about 50 ms (BENCHMARKS.md, "Batch invariance")
DECODE_BATCH = 32


@torch.inference_mode()
def decode_logits(images: torch.Tensor, decoder: str | None = None) -> torch.Tensor:
    """(B, C, H, W) images in [-1, 1] (other sizes are resized) -> (B, bits * copies) logits, on the CPU, in fixed
    micro-batches so that an image's logits are the same whatever it was read with."""
    dec, _ = decoder_and_center(decoder)
    cfg = dec.config
    x = fit_to(images, (cfg.channels, cfg.image_size, cfg.image_size)).float()
    out = in_fixed_batches(dec, x, DECODE_BATCH)
    return out if out is not None else dec(x)


def verify_guided(images: torch.Tensor, key: WatermarkKey, *, alpha: float = 0.01, scheme: GuidedScheme = GuidedScheme(),
                  decoder: str | None = None) -> list[GuidedReading]:
    """One key's guided readings of (B, C, H, W) images (the decoder folder's, bundled by default)."""
    if not 0 < alpha < 1:
        raise GuardError(f"alpha must be between 0 and 1, got {alpha}")
    _, cal = decoder_and_center(decoder)
    return read_logits(decode_logits(images, decoder), cal, key, scheme)
