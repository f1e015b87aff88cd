"""CLI smoke tests. The end-to-end one uses the bundled model; the rest check user mistakes."""

import subprocess
import sys

import pytest

from generator.checkpoint import BUNDLED
from generator.image_io import load_image


def run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "api.cli", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(not (BUNDLED / "model.safetensors").exists(), reason="bundled model not trained yet")
def test_sample_with_bundled_model_is_seeded(tmp_path):
    a = run("sample", "--n", "10", "--steps", "10", "--out", str(tmp_path / "a"), "--seed", "3", "--json")
    assert a.returncode == 0, a.stderr
    files = sorted((tmp_path / "a").glob("sample_*.png"))
    assert [f.name.split("label")[1] for f in files] == [f"{d}.png" for d in range(10)]
    assert (tmp_path / "a" / "grid.png").exists()
    assert load_image(files[0]).shape == (1, 28, 28)
    b = run("sample", "--n", "10", "--steps", "10", "--out", str(tmp_path / "b"), "--seed", "3")
    assert b.returncode == 0, b.stderr
    for f in files:
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes()


@pytest.mark.parametrize("args,match", [
    (["sample", "--label", "12"], "unknown label 12"),
    (["sample", "--checkpoint", "/nonexistent/ckpt"], "no such checkpoint"),
    (["sample", "--steps", "5000"], "steps must be between"),
    (["train", "--data", "folder:/nonexistent", "--steps", "1"], "no such folder"),
])
def test_user_mistakes_exit_2_without_traceback(tmp_path, args, match):
    r = run(*args, "--out", str(tmp_path / "o"))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert match in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_argument_values_exit_2(tmp_path):
    r = run("sample", "--steps", "0", "--out", str(tmp_path))
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_corrupt_checkpoint_via_cli(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    r = run("sample", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "corrupt" in r.stderr and "Traceback" not in r.stderr


def test_train_refuses_to_overwrite_a_run(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    r = run("train", "--data", "digits", "--out", str(tmp_path), "--steps", "1")
    assert r.returncode == 2 and "--resume" in r.stderr


def test_negative_counts_are_refused(tmp_path):
    r = run("watermark", "eval", "--key", str(tmp_path / "k"), "--fid-seeds", "-1")
    assert r.returncode == 2 and "must be at least 0" in r.stderr and "Traceback" not in r.stderr
