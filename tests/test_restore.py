"""DDNM restoration (generator.restore) and the applications on top of it (api.apps).

Tiny models for the invariants (they hold for any prior); the bundled digit model for the watermark.
"""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_guard.api.apps import Marking, built_in_mask, colorize, inpaint_image, mask_from_image, refine
from ddpm_guard.generator.checkpoint import BUNDLED, load_model, save_model
from ddpm_guard.generator.config import DiffusionConfig
from ddpm_guard.generator.errors import GuardError
from ddpm_guard.generator.image_io import decode_image, encode_png, quantize, to_tensor
from ddpm_guard.generator.restore import LUMA, blur, blur_image, ddnm, downsample, gray, inpaint, travel_schedule
from ddpm_guard.generator.unet import UNet
from tests.conftest import tiny_unet


@pytest.fixture(scope="module")
def tiny(trained_tiny):
    model, schedule, _ = load_model(trained_tiny[0], device="cpu")
    return model, schedule


@pytest.fixture(scope="module")
def tiny_rgb(tmp_path_factory):
    """An untrained 8x8 RGB unconditional model saved as a checkpoint: DDNM's guarantees don't need a good prior."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("rgb")
    save_model(folder, UNet(tiny_unet(in_channels=3, num_classes=None)), DiffusionConfig())
    return folder


def test_travel_schedule_without_travel_is_the_grid_and_with_travel_redoes_each_jump():
    grid = [9, 7, 5, 3, 1]
    assert travel_schedule(grid) == [(9, 7), (7, 5), (5, 3), (3, 1), (1, -1)]
    moves = travel_schedule(grid, jump=2, repeats=3)
    downs = [m for m in moves if m[1] < m[0]]
    ups = [m for m in moves if m[1] > m[0]]
    assert moves[-1] == (1, -1) and len(ups) == 2 * 2  # two travel points (after 2 and 4 steps), 2 extra passes each
    assert all(u == (5, 9) or u == (1, 5) for u in ups)
    assert len(downs) == len(grid) + 2 * 2 * 2


@pytest.mark.parametrize("make_op", [lambda: downsample(2), lambda: downsample(4), lambda: gray(),
                                     lambda: blur(1.5, (16, 16)),
                                     lambda: inpaint(built_in_mask("strokes", 16, 16, seed=1))])
def test_pseudo_inverse_reproduces_every_measurement(make_op):
    op = make_op()
    x = torch.rand(3, 3 if op.name == "gray" else 1, 16, 16) * 2 - 1
    y = op.forward(x)
    assert torch.allclose(op.forward(op.pinv(y)), y, atol=1e-5)  # A A+ A = A
    assert torch.allclose(op.forward(op.project(torch.zeros_like(x), y)), y, atol=1e-5)


def test_unsupported_scale_and_blur_are_user_errors():
    with pytest.raises(GuardError, match="--scale 3 is not supported"):
        downsample(3)
    with pytest.raises(GuardError, match="sigma"):
        blur(0, (8, 8))


def test_superresolution_downsamples_back_to_its_input(tiny):
    model, schedule = tiny
    small = torch.rand(1, 4, 4) * 2 - 1
    out = refine(model, schedule, small, scale=2, steps=20)
    assert out.shape == (1, 8, 8)
    assert torch.allclose(downsample(2).forward(out[None])[0], small, atol=1e-3)  # downsample(refine(y)) ~ y


def test_deblur_is_consistent_with_the_blurred_input(tiny):
    model, schedule = tiny
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 8, 8, generator=g) * 1.2 - 0.6
    y = blur_image(x, 1.0)
    out = refine(model, schedule, y[0], deblur=1.0, steps=20)
    # every frequency the blur kept (gain >= BLUR_CUTOFF) is given back exactly: A out = A A+ y
    op = blur(1.0, (8, 8))
    assert (op.forward(out[None]) - op.forward(op.pinv(y))).abs().max().item() < 1e-3


def test_inpainting_keeps_every_known_pixel_exactly(tiny):
    model, schedule = tiny
    img = quantize(torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1)
    for name in ("box", "half", "strokes"):
        known = built_in_mask(name, 8, 8, seed=3)
        out = quantize(inpaint_image(model, schedule, img, known, steps=20, jump=2, repeats=2))
        k = known[0].bool()
        assert torch.equal(out[k], img[k]), name
        assert not torch.equal(out[~k], img[~k]), name  # the hole was actually filled
        # and it survives the 8-bit PNG round trip bit for bit
        back = to_tensor(decode_image(encode_png(out), mode="L"))
        assert torch.equal(back[k], img[k])


def test_colorize_keeps_the_luma_at_any_size(tiny_rgb):
    model, schedule, _ = load_model(tiny_rgb, device="cpu")
    luma = torch.rand(1, 13, 21, generator=torch.Generator().manual_seed(4)) * 2 - 1
    out = colorize(model, schedule, luma, steps=20)
    assert out.shape == (3, 13, 21)
    w = torch.tensor(LUMA).view(3, 1, 1)
    assert torch.allclose((out * w).sum(0, keepdim=True), luma, atol=1e-4)  # gray(colorize(x)) = gray(x)
    assert (out.amax(0) - out.amin(0)).max() > 0.05  # it is not just grey
    # as users see it: PIL's own grey conversion of the saved PNG is within one 8-bit level of the input
    pil_gray = torch.from_numpy(np.array(Image.open(io.BytesIO(encode_png(out))).convert("L")))
    want = ((luma[0] + 1) * 127.5)
    assert (pil_gray.float() - want).abs().max() <= 1.0 + 1e-4


@pytest.mark.parametrize("call,match", [
    (lambda m, s: refine(m, s, torch.zeros(1, 8, 8), scale=2), "must be 4x4"),
    (lambda m, s: refine(m, s, torch.zeros(1, 4, 4), scale=3), "not supported"),
    (lambda m, s: refine(m, s, torch.stack([torch.ones(8, 8), -torch.ones(8, 8), torch.zeros(8, 8)]), deblur=1.0),
     "colour image but the model is greyscale"),
    (lambda m, s: inpaint_image(m, s, torch.zeros(1, 8, 8), torch.ones(1, 1, 8, 8)), "mask is empty"),
    (lambda m, s: inpaint_image(m, s, torch.zeros(1, 8, 8), torch.zeros(1, 1, 6, 8)), "same size"),
    (lambda m, s: mask_from_image(torch.zeros(1, 5, 5), (8, 8)), "same size"),
    (lambda m, s: colorize(m, s, torch.zeros(1, 8, 8)), "colour \\(RGB\\) model"),
])
def test_application_mistakes_are_one_clear_error(tiny, call, match):
    with pytest.raises(GuardError, match=match):
        call(*tiny)


def test_a_grey_image_stored_as_rgb_is_accepted_by_the_grey_model(tiny):
    model, schedule = tiny
    out = refine(model, schedule, torch.zeros(3, 4, 4), scale=2, steps=5)
    assert out.shape == (1, 8, 8)


def test_mask_image_white_means_fill():
    m = torch.full((1, 4, 4), -1.0)
    m[0, :2] = 1.0
    known = mask_from_image(m, (4, 4))
    assert known[0, 0, :2].sum() == 0 and known[0, 0, 2:].min() == 1


def test_ddnm_is_deterministic_given_x_T_and_eta_0(tiny):
    model, schedule = tiny
    op = downsample(2)
    y = torch.rand(2, 1, 4, 4) * 2 - 1
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    a = ddnm(model, schedule, op, y, (2, 1, 8, 8), steps=10, eta=0.0, x_T=x_T)
    b = ddnm(model, schedule, op, y, (2, 1, 8, 8), steps=10, eta=0.0, x_T=x_T)
    assert torch.equal(a, b)


@pytest.mark.skipif(not (BUNDLED / "model.safetensors").exists(), reason="bundled model not trained yet")
def test_restored_outputs_carry_the_watermark_of_their_key():
    """Super-resolution x4 with the bundled model: the keyed x_T survives well enough to verify (the
    rates per application are in BENCHMARKS.md; x4 is the one measured at ~70 %)."""
    from ddpm_guard.generator.data import load_dataset
    from ddpm_guard.watermark.keys import WatermarkKey
    from ddpm_guard.watermark.verify import verify_images

    model, schedule, _ = load_model(None, device="cpu")
    # fixed keys: at ~70 % per image, "4 of 8" failed about 6 % of runs when the keys were drawn anew each time
    key, other = WatermarkKey(bytes(range(32))), WatermarkKey(bytes(32))
    digits = load_dataset("mnist5k", "heldout").images[::125][:8]
    outs = torch.stack([quantize(refine(model, schedule, downsample(4).forward(d[None])[0], scale=4, steps=50,
                                        marking=Marking(key, 0x2A, seed=i))) for i, d in enumerate(digits)])
    mine = verify_images(outs, {"k": key}, model, schedule, alpha=0.01)
    theirs = verify_images(outs, {"other": other}, model, schedule, alpha=0.01)
    assert sum(r.detected for r in mine) >= 4
    assert sum(r.detected for r in theirs) <= 1


def test_inpainting_time_travels_by_default_but_not_with_a_watermark_key(tiny, tmp_path, monkeypatch):
    import ddpm_guard.api.apps as apps
    from ddpm_guard.watermark.keys import load_key, new_key_file

    model, schedule = tiny
    seen = []
    real = apps.ddnm
    monkeypatch.setattr(apps, "ddnm", lambda *a, **kw: seen.append((kw["jump"], kw["repeats"], kw["eta"])) or real(*a, **kw))
    img, known = torch.zeros(1, 8, 8), built_in_mask("half", 8, 8)
    inpaint_image(model, schedule, img, known, steps=10)
    new_key_file(tmp_path / "k.key")
    marking = Marking(load_key(tmp_path / "k.key"), 1, 0)
    inpaint_image(model, schedule, img, known, steps=10, marking=marking)
    assert seen == [(*apps.INPAINT_TRAVEL, apps.DEFAULT_ETA), (0, 1, 0.0)]
    with pytest.raises(GuardError, match="time travel"):
        inpaint_image(model, schedule, img, known, steps=10, jump=5, repeats=2, marking=marking)


def test_colorize_averages_samples_without_a_key_and_refuses_to_with_one(tiny_rgb, tmp_path):
    from ddpm_guard.watermark.keys import load_key, new_key_file

    model, schedule, _ = load_model(tiny_rgb, device="cpu")
    luma = torch.rand(1, 10, 12, generator=torch.Generator().manual_seed(6)) * 2 - 1
    one = colorize(model, schedule, luma, steps=10, samples=1)
    four = colorize(model, schedule, luma, steps=10)  # default: the mean of COLOR_SAMPLES runs
    w = torch.tensor(LUMA).view(3, 1, 1)
    for out in (one, four):
        assert torch.allclose((out * w).sum(0, keepdim=True), luma, atol=1e-4)
    assert not torch.allclose(one, four)
    new_key_file(tmp_path / "k.key")
    marking = Marking(load_key(tmp_path / "k.key"), 1, 0)
    assert colorize(model, schedule, luma, steps=10, marking=marking).shape == (3, 10, 12)
    with pytest.raises(GuardError, match="--samples"):
        colorize(model, schedule, luma, steps=10, samples=4, marking=marking)
