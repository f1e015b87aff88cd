import pytest
import torch

from ddpm_guard.generator.checkpoint import STATE_NAME, load_model, read_config
from ddpm_guard.generator.config import DiffusionConfig
from ddpm_guard.generator.data import Dataset
from ddpm_guard.generator.errors import GuardError
from ddpm_guard.generator.train import EMA, Trainer

from conftest import tiny_train, tiny_unet


def test_tiny_model_overfits_one_batch(tmp_path, digits):
    batch = Dataset(digits.images[:32], digits.labels[:32], "one-batch")
    losses = []
    tr = Trainer(tmp_path, tiny_unet(), DiffusionConfig(num_timesteps=50), tiny_train(max_steps=0), device="cpu")
    for steps in (20, 200):
        tr.cfg.max_steps = steps
        tr.cfg.log_every = steps
        losses.append(tr.fit(batch, progress=False)["loss"])
    assert losses[1] < 0.5 * losses[0], losses


def test_ema_tracks_weights():
    m = torch.nn.Linear(2, 2)
    ema = EMA(m, decay=0.9)
    with torch.no_grad():
        m.weight.fill_(1.0)
    for step in range(200):
        ema.update(m, step)
    assert torch.allclose(ema.shadow["weight"], torch.ones(2, 2), atol=1e-3)


def _weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_resume_continues_exactly(tmp_path, digits):
    cfg = dict(max_steps=6, checkpoint_every=3, batch_size=8)
    straight = Trainer(tmp_path / "a", tiny_unet(dropout=0.1), DiffusionConfig(), tiny_train(**cfg), device="cpu")
    straight.fit(digits, progress=False)

    first = Trainer(tmp_path / "b", tiny_unet(dropout=0.1), DiffusionConfig(), tiny_train(**{**cfg, "max_steps": 3}), device="cpu")
    first.fit(digits, progress=False)
    torch.manual_seed(12345)  # disturb global RNG: resume must restore it
    resumed = Trainer.resume(tmp_path / "b", device="cpu", max_steps=6)
    assert resumed.step == 3
    resumed.fit(digits, progress=False)

    a, b = _weights(straight), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(straight.ema.shadow[k], resumed.ema.shadow[k]) for k in a)


def test_resume_takes_new_step_and_time_limits(tmp_path, digits):
    """`train --resume --steps N --max-minutes M` replaces the stored limits; without them the stored ones hold."""
    Trainer(tmp_path, tiny_unet(), DiffusionConfig(), tiny_train(max_steps=2, max_minutes=50.0), device="cpu").fit(
        digits, progress=False)
    kept = Trainer.resume(tmp_path, device="cpu")
    assert (kept.cfg.max_steps, kept.cfg.max_minutes) == (2, 50.0)
    new = Trainer.resume(tmp_path, device="cpu", max_steps=4, max_minutes=0.0)
    assert (new.cfg.max_steps, new.cfg.max_minutes) == (4, 0.0)
    new.fit(digits, progress=False)  # no time left: one step, a checkpoint, and stop
    assert new.step == 3 and read_config(tmp_path)["step"] == 3


def test_checkpoint_save_load_roundtrip(tmp_path, digits):
    tr = Trainer(tmp_path, tiny_unet(), DiffusionConfig(), tiny_train(max_steps=2), device="cpu")
    tr.fit(digits, progress=False)
    model, schedule, cfg = load_model(tmp_path, device="cpu")
    assert cfg["step"] == 2
    for k, v in model.state_dict().items():
        assert torch.equal(v, tr.ema.shadow[k])
    assert schedule.num_timesteps == 1000
    assert not any(tmp_path.glob("*.tmp"))  # atomic writes leave no temporaries


@pytest.mark.parametrize("target", ["model.safetensors", "config.json", STATE_NAME])
def test_corrupt_checkpoint_gives_clear_error(tmp_path, digits, target):
    tr = Trainer(tmp_path, tiny_unet(), DiffusionConfig(), tiny_train(max_steps=1), device="cpu")
    tr.fit(digits, progress=False)
    data = (tmp_path / target).read_bytes()
    (tmp_path / target).write_bytes(data[: len(data) // 2])
    with pytest.raises(GuardError, match="corrupt|invalid|does not match"):
        if target == STATE_NAME:
            Trainer.resume(tmp_path, device="cpu")
        else:
            load_model(tmp_path, device="cpu")


def test_missing_checkpoint_gives_clear_error(tmp_path):
    with pytest.raises(GuardError, match="no such checkpoint"):
        load_model(tmp_path / "nope")
    with pytest.raises(GuardError, match="missing"):
        load_model(tmp_path)


def test_data_shape_mismatch_is_reported(tmp_path, digits):
    tr = Trainer(tmp_path, tiny_unet(image_size=16), DiffusionConfig(), tiny_train(max_steps=1), device="cpu")
    with pytest.raises(GuardError, match="expects"):
        tr.fit(digits, progress=False)


@pytest.mark.skipif(not hasattr(torch, "autocast"), reason="no autocast")
def test_bf16_training_step_is_finite(tmp_path, digits):
    tr = Trainer(tmp_path, tiny_unet(), DiffusionConfig(), tiny_train(max_steps=3, precision="bf16", log_every=3), device="cpu")
    out = tr.fit(digits, progress=False)
    assert torch.isfinite(torch.tensor(out["loss"]))
