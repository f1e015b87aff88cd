"""The ONE safe image decoder and encoder of the project.

Follows Pillow's security handbook: a byte limit before decoding, an allow-list of formats,
decompression bombs as errors, a pixel cap at or below Pillow's default, first frame only,
EXIF orientation applied, modes normalised to L or RGB, and a truncated file is an error, not
half an image. Every path that reads an image calls `decode_image` or `load_image`.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps

from ddpm_guard.generator.errors import GuardError
from ddpm_guard.generator.fsutil import atomic_write_bytes

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
MAX_BYTES = 20 * 1024 * 1024  # 20 MiB of encoded bytes
MAX_PIXELS = 4096 * 4096  # 16.7 MP: below Pillow's default (~89 MP) and ample for a provenance scan
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")
_MAGIC = {b"\x89PNG": "PNG", b"\xff\xd8\xff": "JPEG", b"RIFF": "WEBP", b"GIF8": "GIF", b"BM": "BMP",
          b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}


def sniff_format(data: bytes) -> str | None:
    """The allowed format whose magic number starts `data` ("PNG", "JPEG", ...), without decoding."""
    return next((f for sig, f in _MAGIC.items() if data.startswith(sig)), None)

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must raise, never give half an image


def decode_image(data: bytes, *, mode: str | None = None, name: str = "image",
                 max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode untrusted bytes into a fully loaded PIL image in mode L or RGB (or `mode` if given)."""
    if len(data) > max_bytes:
        raise GuardError(f"{name}: {len(data)} bytes is over the {max_bytes}-byte limit")
    if not data:
        raise GuardError(f"{name}: the file is empty")
    # the per-call pixel cap is checked from the header below; Pillow's process-wide
    # MAX_IMAGE_PIXELS stays at its default (mutating it per call races between threads)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
            if img.width * img.height > max_pixels:
                raise GuardError(f"{name}: {img.width}x{img.height} pixels is over the {max_pixels}-pixel limit")
            img.seek(0)  # first frame only of animated GIF/WEBP/TIFF
            img.load()
            img = ImageOps.exif_transpose(img)
    except GuardError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise GuardError(f"{name}: refused as a decompression bomb ({e})") from None
    except Image.UnidentifiedImageError:
        raise GuardError(f"{name}: not an image in an allowed format ({', '.join(ALLOWED_FORMATS)})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise GuardError(f"{name}: corrupt or truncated image ({e})") from None
    return _normalise_mode(img, mode)


def _normalise_mode(img: Image.Image, mode: str | None) -> Image.Image:
    if img.mode in ("P", "PA") or (img.mode in ("RGBA", "LA", "La", "RGBa") or "transparency" in img.info):
        # composite transparency over white so transparent pixels don't decode as arbitrary colours
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, rgba).convert("RGB")
    elif img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        img = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    elif img.mode not in ("L", "RGB"):
        img = img.convert("RGB")  # CMYK, YCbCr, LAB, 1 ...
    if mode is not None and img.mode != mode:
        img = img.convert(mode)
    return img


def read_bytes(path: str | os.PathLike, max_bytes: int = MAX_BYTES) -> bytes:
    p = Path(path)
    if not p.exists():
        raise GuardError(f"{p}: no such file")
    if not p.is_file():
        raise GuardError(f"{p}: not a regular file")
    size = p.stat().st_size
    if size > max_bytes:
        raise GuardError(f"{p}: {size} bytes is over the {max_bytes}-byte limit")
    try:
        return p.read_bytes()
    except OSError as e:
        raise GuardError(f"{p}: cannot read ({e.strerror})") from None


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL image -> float tensor (C, H, W) in [-1, 1]."""
    arr = np.asarray(img, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return torch.from_numpy(arr.copy()) / 127.5 - 1.0


def load_image(path: str | os.PathLike, *, mode: str | None = None, max_bytes: int = MAX_BYTES,
               max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Read and safely decode a file into a (C, H, W) tensor in [-1, 1]."""
    return to_tensor(decode_image(read_bytes(path, max_bytes), mode=mode, name=str(path),
                                  max_bytes=max_bytes, max_pixels=max_pixels))


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round to the 8-bit levels a saved PNG holds, staying a tensor in [-1, 1]."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [-1, 1] -> (H, W) or (H, W, C) uint8, rounded, clamped (no wrap-around)."""
    arr = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    return arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)


def to_pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray(to_uint8(x))


def encode_png(x: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    to_pil(x).save(buf, format="PNG")
    return buf.getvalue()


def save_image(x: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write a (C, H, W) tensor in [-1, 1] as PNG, atomically."""
    p = Path(path)
    atomic_write_bytes(p, encode_png(x))
    return p


def encode_jpeg(x: torch.Tensor, quality: int = 75) -> bytes:
    buf = io.BytesIO()
    to_pil(x).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def save_jpeg(x: torch.Tensor, path: str | os.PathLike, quality: int = 75) -> Path:
    """Write a (C, H, W) tensor in [-1, 1] as JPEG at `quality`, atomically: a platform's re-save."""
    p = Path(path)
    atomic_write_bytes(p, encode_jpeg(x, quality))
    return p


def make_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> torch.Tensor:
    """Tile (B, C, H, W) into one (C, H', W') image with a dark border."""
    b, c, h, w = images.shape
    nrow = nrow or max(1, int(np.ceil(np.sqrt(b))))
    ncol = int(np.ceil(b / nrow))
    grid = torch.full((c, ncol * (h + pad) + pad, nrow * (w + pad) + pad), -1.0)
    for i in range(b):
        r, col = divmod(i, nrow)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = images[i]
    return grid


def list_images(folder: str | os.PathLike) -> list[Path]:
    p = Path(folder)
    if not p.exists():
        raise GuardError(f"{p}: no such folder")
    if not p.is_dir():
        raise GuardError(f"{p}: not a folder")
    return sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)


def fit_to(images: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Any-size, any-channel images in [-1, 1] -> a model's (C, H, W): grey by channel mean, colour by
    repetition, resized bilinear with antialiasing."""
    import torch.nn.functional as F

    c, h, w = shape
    x = images.float()
    if x.shape[1] != c:
        x = x.mean(1, keepdim=True) if c == 1 else x.expand(-1, c, -1, -1)
    if x.shape[-2:] != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(-1, 1).contiguous()


def stack_fitted(images: list[torch.Tensor], shape: tuple[int, int, int]) -> torch.Tensor:
    """(C, H, W) tensors of any sizes -> one (B, *shape) batch, each fitted by `fit_to`."""
    return torch.stack([fit_to(x[None], shape)[0] for x in images])


def expand_paths(paths: list[str]) -> list[tuple[Path, str | None]]:
    """Files under each folder, in order; a folder with no images becomes one row with an error,
    so one bad argument does not stop the run. Missing files are reported when read."""
    out: list[tuple[Path, str | None]] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = list_images(p)
            out.extend((f, None) for f in found)
            if not found:
                out.append((p, f"{p}: no images found in this folder"))
        else:
            out.append((p, None))
    return out
