import numpy as np
import torch

from ddpm_guard.generator.metrics import fid, kid, memorization, precision_recall


def _gauss(n, d=8, shift=0.0, seed=0):
    return np.random.default_rng(seed).normal(shift, 1.0, (n, d))


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_shift():
    a = _gauss(2000)
    assert abs(fid(a, a)) < 1e-6
    near, far = fid(a, _gauss(2000, shift=0.1, seed=1)), fid(a, _gauss(2000, shift=1.0, seed=1))
    assert near < far
    assert abs(far - 8.0) < 0.8  # ||mu1 - mu2||^2 = 8 * 1^2 with equal covariances


def test_kid_is_unbiased_on_identical_distributions():
    m, s = kid(_gauss(1000, seed=0), _gauss(1000, seed=1), subsets=40, subset_size=200)
    assert abs(m) < 3 * s / np.sqrt(40) + 1e-3  # centred on zero, unlike the biased estimator
    m2, _ = kid(_gauss(1000), _gauss(1000, shift=1.0, seed=1), subsets=10, subset_size=200)
    assert m2 > 0.1


def test_precision_recall_on_separated_clusters():
    real = _gauss(300, d=2)
    assert precision_recall(real, _gauss(300, d=2, seed=1)) > (0.8, 0.8)
    far = _gauss(300, d=2, shift=50.0, seed=1)
    assert precision_recall(real, far) == (0.0, 0.0)
    half = np.concatenate([_gauss(150, d=2, seed=2), far[:150]])  # half the fakes off-manifold
    p, r = precision_recall(real, half)
    assert 0.35 < p < 0.6 and r > 0.6


def test_memorization_flags_a_planted_copy():
    g = torch.Generator().manual_seed(0)
    train = torch.rand(200, 1, 8, 8, generator=g)
    fresh = torch.rand(20, 1, 8, 8, generator=g)
    copy = train[17:18] + 0.01 * torch.randn(1, 1, 8, 8, generator=g)  # a near-exact copy
    out = memorization(torch.cat([fresh, copy]), train)
    assert out["flagged"].tolist() == [False] * 20 + [True]
    assert out["nearest"][-1] == 17


def test_fid_vs_steps_plot_from_a_merged_report(tmp_path):
    """Sweeps saved as JSON come back with sorted keys (ddim-10, ddim-100, ddim-20); the plot orders the
    points by step count per sampler and draws DDPM apart."""
    from PIL import Image

    from ddpm_guard.generator.evaluate import _plot_steps

    sweep = {k: {"fid": f} for k, f in [("ddim-10", 48.7), ("ddim-100", 46.6), ("ddim-20", 48.1), ("ddpm-1000", 45.4)]}
    _plot_steps(sweep, tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").size[0] > 100
