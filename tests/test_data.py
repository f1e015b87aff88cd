import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_guard.generator.data import load_dataset
from ddpm_guard.generator.errors import GuardError


def test_mnist5k_split_is_fixed_per_digit():
    train, held = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "heldout")
    assert train.images.shape == (4000, 1, 28, 28) and held.images.shape == (1000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [400] * 10
    assert torch.bincount(held.labels).tolist() == [100] * 10
    assert train.images.min() >= -1 and train.images.max() <= 1
    # held-out digits are not in the training split
    flat_t = {hash(x.numpy().tobytes()) for x in train.images}
    assert not any(hash(x.numpy().tobytes()) in flat_t for x in held.images)
    # the split is the last 100 of each digit in file order
    all_ = load_dataset("mnist5k", "all")
    assert torch.equal(held.images[:100], all_.images[all_.labels == 0][400:])


def test_digits_and_resize():
    d = load_dataset("digits", "train", image_size=16)
    assert d.images.shape == (1797, 1, 16, 16)
    assert d.images.min() >= -1 and d.images.max() <= 1


def _png(path, size=(8, 8), mode="L"):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0]) + ((3,) if mode == "RGB" else ()), dtype=np.uint8), mode).save(path)


def test_folder_dataset(tmp_path):
    for i in range(3):
        _png(tmp_path / f"{i}.png")
    d = load_dataset(f"folder:{tmp_path}")
    assert d.images.shape == (3, 1, 8, 8) and (d.labels == -1).all()
    assert load_dataset(f"folder:{tmp_path}", channels=3).images.shape == (3, 3, 8, 8)


def test_folder_errors(tmp_path):
    with pytest.raises(GuardError, match="no images"):
        load_dataset(f"folder:{tmp_path}")
    with pytest.raises(GuardError, match="no such folder"):
        load_dataset(f"folder:{tmp_path / 'missing'}")
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png", size=(9, 8))
    with pytest.raises(GuardError, match="differs"):
        load_dataset(f"folder:{tmp_path}")
    assert load_dataset(f"folder:{tmp_path}", image_size=8).images.shape == (2, 1, 8, 8)
    (tmp_path / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(GuardError, match="c.png"):
        load_dataset(f"folder:{tmp_path}", image_size=8)


def test_unknown_names():
    with pytest.raises(GuardError, match="unknown data set"):
        load_dataset("cifar10")
    with pytest.raises(GuardError, match="unknown split"):
        load_dataset("mnist5k", "test")
