"""The robust message decoder (watermark v2): a small CNN that reads a bit string out of a 28x28 digit
after the edits uploads go through, trained HiDDeN-style (Zhu et al. 2018) with an encoder and an
attack layer whose operations are the real ones in the forward pass (JPEG, median and clamping pass
a straight-through gradient).

The encoder only teaches the decoder what to look for; the mark itself is put in by the reverse
process (watermark.guided.guidance), which steers x0 toward images the decoder reads as the keyed codeword.

This module holds the networks, the moment frame, the inverse read views and the decoder folder (load, save,
views, reader); training is watermark.guided.train.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ddpm_guard.generator.errors import GuardError
from ddpm_guard.watermark.guided.config import DecoderConfig

WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "decoder"


def normalise(x: torch.Tensor) -> torch.Tensor:
    """Brightness invariance: [-1, 1] images scaled so each one's brightest pixel is white. A brightness
    change x * f (clamped) is undone exactly for f <= 1 and up to the clamp for f > 1."""
    x01 = (x + 1) / 2
    peak = x01.flatten(1).amax(1).clamp(min=1 / 255).view(-1, 1, 1, 1)
    return (x01 / peak) * 2 - 1


CANON_RADIUS = 0.42  # radius of gyration after normalisation, in grid units ([-1, 1]): a typical MNIST digit's
# the moments weigh only intensity above this share of the peak: noise and a grey background otherwise pull the
# centroid to the middle and inflate the radius (measured on held-out digits: the canonical image's error under
# noise 0.1 halves, 0.137 -> 0.069; JPEG q25 and rotation 75 improve too; blur sigma 1 costs 0.065 -> 0.085)
CANON_FLOOR = 0.2


def _grid(h: int, w: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel centres in grid_sample's coordinates (align_corners=False): u along x, v along y."""
    u = (torch.arange(w, dtype=like.dtype) * 2 + 1) / w - 1
    v = (torch.arange(h, dtype=like.dtype) * 2 + 1) / h - 1
    return u.view(1, 1, 1, w), v.view(1, 1, h, 1)


@torch.no_grad()
def canonical_affine(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) in [-1, 1] -> (B, 2, 3) affine maps from the canonical frame to the image (grid
    coordinates, for F.affine_grid), computed from the intensity moments: centroid to the centre,
    principal axis upright, radius of gyration fixed, heavier end down (the third moment along the
    axis settles its 180-degree ambiguity)."""
    _, _, h, w = x.shape
    m = (((x + 1) / 2 - CANON_FLOOR) / (1 - CANON_FLOOR)).clamp(0, 1)
    u, v = _grid(h, w, x)
    mass = m.sum((1, 2, 3)).clamp(min=1e-6)
    cx, cy = (m * u).sum((1, 2, 3)) / mass, (m * v).sum((1, 2, 3)) / mass
    du, dv = u - cx.view(-1, 1, 1, 1), v - cy.view(-1, 1, 1, 1)
    mu20, mu02 = (m * du * du).sum((1, 2, 3)) / mass, (m * dv * dv).sum((1, 2, 3)) / mass
    mu11 = (m * du * dv).sum((1, 2, 3)) / mass
    theta = 0.5 * torch.atan2(2 * mu11, mu20 - mu02)  # the principal axis' angle from the u axis
    phi = theta - math.pi / 2  # rotates the canonical vertical onto the principal axis
    radius = (mu20 + mu02).clamp(min=1e-6).sqrt()
    scale = radius / CANON_RADIUS
    along = du * torch.cos(theta).view(-1, 1, 1, 1) + dv * torch.sin(theta).view(-1, 1, 1, 1)
    flip = torch.where((m * along ** 3).sum((1, 2, 3)) < 0, -1.0, 1.0)
    su = sv = flip * scale  # the canonical u axis goes onto the minor axis, v onto the principal one
    c, s = torch.cos(phi), torch.sin(phi)
    return torch.stack([torch.stack([c * su, -s * sv, cx], 1), torch.stack([s * su, c * sv, cy], 1)], 1)


def invert_affine(a: torch.Tensor) -> torch.Tensor:
    """The inverse of (B, 2, 3) affine maps p -> A p + c."""
    inv = torch.linalg.inv(a[:, :, :2])
    return torch.cat([inv, -(inv @ a[:, :, 2:])], 2)


def warp(x: torch.Tensor, a: torch.Tensor, fill: float = -1.0) -> torch.Tensor:
    """Resample x on the grid a maps the output onto (bilinear; outside is `fill`). Gradients reach x."""
    grid = F.affine_grid(a.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill


def canonicalise(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) in [-1, 1] -> the same digits moved to their canonical frame (canonical_affine).
    The frame is computed without gradient; the resampling passes gradients to the pixels."""
    return warp(x, canonical_affine(x))


class MessageDecoder(nn.Module):
    """(B, C, H, W) in [-1, 1] -> (B, bits) logits; positive reads bit 0 (chip +1)."""

    copies = 1  # copies of the codeword in the logits (a ViewedDecoder reads several)
    reader = None  # the network that reads instead of this one (a ViewedDecoder's, when it has one)

    @property
    def embed(self) -> nn.Module:
        """The decoder guidance steers: this one (a ViewedDecoder's is its member, read on the file itself)."""
        return self

    @property
    def file_reader(self) -> nn.Module:
        """The network that reads the file itself: this one (a ViewedDecoder's is its reader, if it has one)."""
        return self

    def __init__(self, cfg: DecoderConfig = DecoderConfig()):
        super().__init__()
        self.config = cfg
        w = cfg.width

        def block(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())

        self.features = nn.Sequential(block(cfg.channels, w, 1), block(w, 2 * w, 2), block(2 * w, 2 * w, 1),
                                      block(2 * w, 4 * w, 2), block(4 * w, 4 * w, 1))
        self.head = nn.Linear(8 * w, cfg.bits)  # global mean and max pooling, concatenated

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = normalise(x)
        if self.config.canonical:
            x = canonicalise(x)
        h = self.features(x)
        return self.head(torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1))


class MessageEncoder(nn.Module):
    """(image, bits in {0, 1}) -> a residual bounded by `strength`: the training partner only."""

    def __init__(self, cfg: DecoderConfig = DecoderConfig(), width: int = 32):
        super().__init__()
        self.config = cfg
        self.msg = nn.Linear(cfg.bits, 16 * 7 * 7)
        self.net = nn.Sequential(nn.Conv2d(cfg.channels + 16, width, 3, 1, 1), nn.SiLU(),
                                 nn.Conv2d(width, width, 3, 1, 1), nn.SiLU(),
                                 nn.Conv2d(width, width, 3, 1, 1), nn.SiLU(),
                                 nn.Conv2d(width, cfg.channels, 3, 1, 1))

    def forward(self, x: torch.Tensor, bits: torch.Tensor, strength: float) -> torch.Tensor:
        """With a canonical decoder the residual is made in the digit's canonical frame and warped back, so
        encoder and decoder agree on where the mark sits whatever the digit's pose."""
        a = canonical_affine(normalise(x)) if self.config.canonical else None
        xc = warp(x, a) if a is not None else x
        m = self.msg(2 * bits.float() - 1).view(-1, 16, 7, 7)
        m = F.interpolate(m, size=x.shape[-2:], mode="bilinear", align_corners=False)
        r = self.net(torch.cat([xc, m], 1))
        r = strength * torch.tanh(r)
        if a is not None:
            r = warp(r, invert_affine(a), fill=0.0)
        return (x + r).clamp(-1, 1)


def save_decoder(out: Path, dec: MessageDecoder, extra: dict) -> None:
    from safetensors.torch import save_file

    from ddpm_guard.generator.fsutil import atomic_write_bytes

    save_file({k: v.detach().cpu().contiguous() for k, v in dec.state_dict().items()}, str(out / "decoder.safetensors"))
    atomic_write_bytes(out / "decoder.json", json.dumps({"decoder": asdict(dec.config), **extra}, indent=1).encode())


def _squeeze(x: torch.Tensor, fu: float, fv: float) -> torch.Tensor:
    """The image shrunk about its centre by fu along x and fv along y (bilinear; the border filled black)."""
    a = torch.tensor([[1 / fu, 0.0, 0.0], [0.0, 1 / fv, 0.0]], dtype=x.dtype).expand(len(x), 2, 3)
    return warp(x, a)


def _unbright(x: torch.Tensor, gain: float = 4.0) -> torch.Tensor:
    """Undo a brightness gain where it did not clip: pixels below 254 levels divided by `gain`, saturated ones kept
    white. After a gain of 3-6 the dark background (where the guided mark mostly lives) is back near its level
    while the clipped strokes stay white; a file with no saturated pixel is only scaled, which normalise() undoes."""
    x01 = (x + 1) / 2
    return torch.where(x01 >= 254 / 255, x01, x01 / gain) * 2 - 1


# inverse views a decoder can read each file under (ViewedDecoder): the file itself; a 3:4 squeeze along x or y,
# which undoes the stretch of a crop with an aspect ratio resized back to the full size (Tree-Ring's crop: a 21x28
# window stretched to 28x28), a map the moment frame cannot undo; and a brightness gain of about 4 undone where it
# did not clip, which normalise() cannot undo (BENCHMARKS.md, "Reading each file under a few inverse views")
READ_VIEWS = {"id": lambda x: x, "sx": lambda x: _squeeze(x, 0.75, 1.0), "sy": lambda x: _squeeze(x, 1.0, 0.75),
              "unbright": _unbright}


def check_views(views: list[str]) -> None:
    """Read views must be distinct names from READ_VIEWS, the first "id" (the view the mark is written for)."""
    if not views or views[0] != "id" or len(set(views)) != len(views) or set(views) - set(READ_VIEWS):
        raise GuardError(f"read views must be distinct names from {sorted(READ_VIEWS)}, the first 'id'; got {views}")


class ViewedDecoder(nn.Module):
    """One decoder read under several inverse views of the file (READ_VIEWS), each view its own copy of the
    codeword: (B, bits * views) logits. The zero-bit test keeps the best view, each view's p-value divided by its
    weight (a weighted Bonferroni bound, watermark.guided.statistic.zero_bit_test), so re-synchronising by search costs the
    false-positive rate nothing (Kutter 1998; Lichtenauer et al. 2003 on the price of exhaustive search). The mark
    is written for the first view, the file itself: `embed` is the decoder guidance steers.

    `reader`, when given, is the network that reads every view instead of the member: a copy of the member
    fine-tuned on the guided marks themselves through the attack layer (watermark.guided.train). Guidance still steers
    the member, so the marks do not change."""

    def __init__(self, member: MessageDecoder, views: list[str], reader: MessageDecoder | None = None):
        super().__init__()
        check_views(views)
        self.member = member
        self.reader = reader
        self.views = tuple(views)
        self.config = member.config
        self.copies = len(views)

    @property
    def embed(self) -> MessageDecoder:
        return self.member

    @property
    def file_reader(self) -> MessageDecoder:
        """The network that reads every view (the file view among them): the reader, else the member."""
        return self.member if self.reader is None else self.reader

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.file_reader(READ_VIEWS[v](x)) for v in self.views], 1)


def set_read_views(path: str | Path, views: list[str], weights: list[float]) -> Path:
    """Give the decoder in `path` these read views and their weights (summing to 1). Its calibration no longer
    fits the new logits, so it is removed: run `ddpm-guard weights decoder calibrate` next."""
    from ddpm_guard.generator.fsutil import atomic_write_bytes

    d = Path(path)
    load_decoder(d)  # a folder that is no decoder fails here
    record = json.loads((d / "decoder.json").read_text())
    check_views(views)
    w = [float(v) for v in weights]
    if len(w) != len(views) or min(w) <= 0 or abs(sum(w) - 1) > 1e-6:
        raise GuardError(f"give one positive weight per view, summing to 1; got {weights} for {views}")
    record.pop("calibration", None)
    if views == ["id"]:
        record.pop("read_views", None)
        record.pop("view_weights", None)
    else:
        record["read_views"], record["view_weights"] = list(views), w
    atomic_write_bytes(d / "decoder.json", json.dumps(record, indent=1).encode())
    return d


READER_FILE = "reader.safetensors"  # a decoder folder's reading network, when it has one (watermark.reader)


def set_reader(path: str | Path, reader_dir: str | Path | None) -> Path:
    """Give the decoder in `path` the reading network trained in `reader_dir` (watermark.guided.train.train_reader's output: a
    decoder folder of the same architecture), or take its reader away (None). Guidance keeps steering the decoder itself;
    the calibration no longer fits the new logits, so it is removed: run `ddpm-guard weights decoder calibrate`."""
    import shutil

    from ddpm_guard.generator.fsutil import atomic_write_bytes

    d = Path(path)
    _, record = load_decoder(d, with_reader=False)  # its old reader (perhaps gone) is replaced or taken away
    record.pop("calibration", None)
    if reader_dir is None:
        record.pop("reader", None)
        (d / READER_FILE).unlink(missing_ok=True)
    else:
        reader, rrec = load_decoder(reader_dir)
        if not isinstance(reader, MessageDecoder) or reader.config != DecoderConfig(**record["decoder"]):
            raise GuardError(f"{reader_dir}: the reader must be one plain decoder with the same config as {d}'s")
        shutil.copyfile(Path(reader_dir) / "decoder.safetensors", d / READER_FILE)
        record["reader"] = rrec.get("reader_training", {"from": str(reader_dir)})
    atomic_write_bytes(d / "decoder.json", json.dumps(record, indent=1).encode())
    return d


def load_decoder(path: str | Path | None = None, *, with_reader: bool = True) -> tuple[nn.Module, dict]:
    """The decoder (a MessageDecoder, or a ViewedDecoder; `.copies` says how many copies of the codeword it reads)
    and its JSON record (config, training, and the calibration watermark.guided.calibrate stores).
    `with_reader=False` leaves out the reader the record names (set_reader replaces or removes it)."""
    from safetensors.torch import load_file

    d = Path(path) if path is not None else WEIGHTS
    if not (d / "decoder.json").is_file() or not (d / "decoder.safetensors").is_file():
        raise GuardError(f"{d}: no watermark decoder (decoder.json + decoder.safetensors) there")
    try:
        record = json.loads((d / "decoder.json").read_text())
        dec = MessageDecoder(DecoderConfig(**record["decoder"]))
        dec.load_state_dict(load_file(str(d / "decoder.safetensors")))
        reader = None
        if record.get("reader") and with_reader:
            if not (d / READER_FILE).is_file():
                raise GuardError(f"{d}: the record names a reader but {READER_FILE} is missing")
            reader = MessageDecoder(dec.config)
            reader.load_state_dict(load_file(str(d / READER_FILE)))
    except GuardError:
        raise
    except Exception as e:  # a damaged record or weights file: one message, not a traceback
        raise GuardError(f"{d}: not a readable watermark decoder ({type(e).__name__})") from None
    if record.get("read_views") or reader is not None:
        dec = ViewedDecoder(dec, record.get("read_views") or ["id"], reader)
    return dec.eval().requires_grad_(False), record
