import pytest
import torch

from ddpm_guard.generator.perturb import (brightness, gaussian_blur, gaussian_noise, jpeg, median_filter, random_brightness,
                               random_resized_crop, resize_and_back, rotate)
from ddpm_guard.watermark.attacks import ATTACKS, TREE_RING_SIX


def square():
    """A white 8x8 square on black, 28x28, in [-1, 1]."""
    x = torch.full((1, 1, 28, 28), -1.0)
    x[..., 10:18, 10:18] = 1.0
    return x


def test_every_attack_keeps_shape_and_range():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 28, 28, generator=g) * 2 - 1
    for name, atk in ATTACKS.items():
        y = atk(x, g)
        assert y.shape == x.shape, name
        assert y.min() >= -1 and y.max() <= 1, name
    assert set(TREE_RING_SIX) <= set(ATTACKS)


def test_rotation_moves_pixels_and_fills_black():
    x = torch.full((1, 1, 28, 28), 1.0)
    y = rotate(x, 45)
    assert y[0, 0, 0, 0] == -1.0 and y[0, 0, 14, 14] == pytest.approx(1.0)
    assert torch.allclose(rotate(square(), 90), square(), atol=1e-5)  # a centred square maps to itself


def test_jpeg_changes_pixels_but_keeps_content():
    x = square()
    y = jpeg(x, 25)
    assert not torch.equal(x, y)
    assert (y - x).abs().mean() < 0.1
    assert y[0, 0, 14, 14] > 0.5 and y[0, 0, 2, 2] < -0.8


def test_crop_zooms_in():
    g = torch.Generator().manual_seed(0)
    y = random_resized_crop(square(), g, scale=0.75, ratio=0.75)
    # the crop is 3/4 as wide: the square is stretched horizontally
    assert (y[0, 0, 14] > 0).sum() > (square()[0, 0, 14] > 0).sum()


def test_blur_spreads_edges():
    y = gaussian_blur(square(), 1.0)
    assert -1 < y[0, 0, 14, 9] < 1 and y[0, 0, 14, 14] > 0.9


def test_noise_has_the_right_scale_and_no_wraparound():
    g = torch.Generator().manual_seed(0)
    mid = torch.zeros(1, 1, 64, 64)  # 0.5 in [0, 1] pixels: no clamping
    y = gaussian_noise(mid, g, std=0.1)
    assert ((y - mid) / 2).std().item() == pytest.approx(0.1, rel=0.05)  # std 0.1 on [0, 1]
    white = torch.ones(1, 1, 64, 64)
    yw = gaussian_noise(white, g, std=0.1)
    assert yw.min() > 0  # white plus noise saturates at white; it never wraps around to black
    black = -torch.ones(1, 1, 64, 64)
    assert gaussian_noise(black, g, std=0.1).max() < 0


def test_brightness():
    x = torch.zeros(1, 1, 4, 4)  # 0.5 grey
    assert torch.allclose(brightness(x, 2.0), torch.ones_like(x))
    assert torch.allclose(brightness(x, 0.0), -torch.ones_like(x))
    f = random_brightness(torch.zeros(500, 1, 1, 1), torch.Generator().manual_seed(0))
    vals = (f + 1) / 2  # = min(1, 0.5 * factor)
    assert vals.min() < 0.05 and (vals == 1).float().mean() > 0.6  # factors span [0, 6]


def test_resize_and_median():
    x = square()
    assert (resize_and_back(x, 0.5) - x).abs().max() > 0.1
    speck = torch.full((1, 1, 9, 9), -1.0)
    speck[..., 4, 4] = 1.0
    assert median_filter(speck).max() == -1.0  # a single bright pixel is removed
    m = median_filter(x)
    assert torch.equal(m[..., 11:17, 11:17], x[..., 11:17, 11:17])  # the square's body survives
    assert (m != x).sum() == 4  # only its four corner pixels are eroded
