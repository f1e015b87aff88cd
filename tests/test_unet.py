import pytest
import torch

from ddpm_guard.generator.config import UNetConfig
from ddpm_guard.generator.unet import UNet, timestep_embedding

from conftest import tiny_unet


@pytest.mark.parametrize("size,channels,mult", [(28, 1, (1, 2, 2)), (32, 3, (1, 2, 2)), (64, 3, (1, 2, 2, 2)), (28, 3, (1, 2, 2))])
def test_shapes_and_finite(size, channels, mult):
    cfg = UNetConfig(image_size=size, in_channels=channels, base_channels=16, channel_mult=mult,
                     num_res_blocks=1, attention_resolutions=(size // 2 ** (len(mult) - 1),), num_heads=2)
    m = UNet(cfg)
    # the output layer starts at zero; perturb it so a NaN anywhere upstream would show
    torch.nn.init.normal_(m.conv_out.weight, std=0.1)
    x = torch.randn(2, channels, size, size)
    out = m(x, torch.tensor([0, 999]), torch.tensor([3, 10]))
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    assert out.abs().sum() > 0


def test_attention_is_placed_at_the_configured_resolutions():
    from ddpm_guard.generator.unet import AttentionBlock

    with_attn = UNet(tiny_unet(attention_resolutions=(4, 8)))
    without = UNet(tiny_unet(attention_resolutions=()))
    n = lambda m: sum(isinstance(x, AttentionBlock) for x in m.modules())  # noqa: E731
    assert n(with_attn) > n(without) == 1  # the middle block always attends


def test_class_conditioning_changes_the_output_and_null_is_default():
    torch.manual_seed(0)
    m = UNet(tiny_unet())
    torch.nn.init.normal_(m.conv_out.weight, std=0.1)
    for p in m.modules():
        if hasattr(p, "conv2"):
            torch.nn.init.normal_(p.conv2.weight, std=0.1)
    x, t = torch.randn(1, 1, 8, 8), torch.tensor([500])
    a, b = m(x, t, torch.tensor([1])), m(x, t, torch.tensor([2]))
    assert not torch.allclose(a, b)
    assert torch.equal(m(x, t, None), m(x, t, torch.tensor([10])))


def test_timestep_embedding_distinguishes_steps():
    e = timestep_embedding(torch.tensor([0, 1, 999]), 32)
    assert e.shape == (3, 32)
    assert not torch.allclose(e[0], e[1])


def test_bad_size_raises():
    with pytest.raises(ValueError):
        UNet(UNetConfig(image_size=30, channel_mult=(1, 2, 2)))
