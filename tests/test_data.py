from pathlib import Path

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


def _write_idx(path, arr, gz=True):
    import gzip

    arr = np.asarray(arr, dtype=np.uint8)
    head = (0x0800 | arr.ndim).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    (gzip.open if gz else open)(path, "wb").write(head + arr.tobytes())


def test_fashion_splits_follow_the_official_split_with_the_last_training_images_as_validation(tmp_path, monkeypatch):
    """Synthetic idx files in the package's layout: train = the first of the training file, val = its last
    FASHION_VAL, heldout = the test file, all = both; a damaged file or a missing package is one message."""
    import ddpm_guard.generator.data as data
    from ddpm_guard.generator.data import load_dataset, read_idx

    rng = np.random.default_rng(0)
    train_x, test_x = rng.integers(0, 256, (12, 28, 28)), rng.integers(0, 256, (5, 28, 28))
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", train_x)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(12) % 10)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", test_x, gz=False)  # uncompressed files are read too
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(5), gz=False)
    monkeypatch.setattr(data, "FASHION_DIR", tmp_path)
    monkeypatch.setattr(data, "FASHION_VAL", 4)
    as_bytes = lambda d: ((d.images[:, 0] + 1) * 127.5).round().numpy().astype(np.uint8)  # noqa: E731
    tr, va, ho, al = (load_dataset("fashion", s) for s in ("train", "val", "heldout", "all"))
    assert np.array_equal(as_bytes(tr), train_x[:8]) and np.array_equal(as_bytes(va), train_x[8:])
    assert np.array_equal(as_bytes(ho), test_x) and len(al) == 17 and ho.labels.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(GuardError, match="validation"):
        load_dataset("mnist5k", "val")
    (tmp_path / "bad.gz").write_bytes(b"junk")
    with pytest.raises(GuardError, match="not a readable idx"):
        read_idx(tmp_path / "bad.gz")
    monkeypatch.setattr(data, "FASHION_DIR", tmp_path / "absent")
    with pytest.raises(GuardError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion", "train")


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_from_the_debian_package_has_the_official_sizes():
    from ddpm_guard.generator.data import load_dataset

    sizes = {s: len(load_dataset("fashion", s)) for s in ("train", "val", "heldout")}
    assert sizes == {"train": 50_000, "val": 10_000, "heldout": 10_000}
    assert load_dataset("fashion", "heldout").labels.bincount().tolist() == [1000] * 10
