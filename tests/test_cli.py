"""CLI smoke tests. The end-to-end one uses the bundled model; the rest check user mistakes."""

import subprocess
import sys

import pytest

from ddpm_guard.generator.checkpoint import BUNDLED
from ddpm_guard.generator.image_io import load_image


def run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "ddpm_guard.api.cli", *args], capture_output=True, text=True, timeout=timeout)


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
    for budget in ("-3", "nan"):  # a time budget that would stop training after one step, or never compare
        r = run("train", "--data", "digits", "--out", str(tmp_path / "run"), "--max-minutes", budget)
        assert r.returncode == 2 and "finite number >= 0" in r.stderr and not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def app_files(tmp_path_factory):
    """A held-out digit, its 7x7 thumbnail, a colour image and a few masks, as a user would have them."""
    import numpy as np
    from PIL import Image

    from ddpm_guard.generator.data import load_dataset
    from ddpm_guard.generator.image_io import save_image
    from ddpm_guard.generator.restore import downsample

    d = tmp_path_factory.mktemp("app_files")
    x = load_dataset("mnist5k", "heldout").images[5]
    save_image(x, d / "digit.png")
    save_image(downsample(4).forward(x[None])[0], d / "small.png")
    Image.fromarray(np.zeros((28, 28, 3), np.uint8) + np.array([200, 30, 30], np.uint8)).save(d / "red.png")
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(d / "empty_mask.png")
    Image.fromarray(np.full((20, 20), 255, np.uint8)).save(d / "small_mask.png")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return d


@pytest.mark.skipif(not (BUNDLED / "model.safetensors").exists(), reason="bundled model not trained yet")
def test_refine_and_inpaint_with_the_bundled_model(app_files, tmp_path):
    import json

    r = run("refine", "--image", str(app_files / "small.png"), "--scale", "4", "--steps", "20",
            "--out", str(tmp_path / "sr.png"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["size"] == [28, 28] and load_image(tmp_path / "sr.png").shape == (1, 28, 28)
    r = run("inpaint", "--image", str(app_files / "digit.png"), "--mask", "box", "--steps", "20",
            "--out", str(tmp_path / "ip.png"))
    assert r.returncode == 0, r.stderr
    a, b = load_image(app_files / "digit.png"), load_image(tmp_path / "ip.png")
    assert (a[:, :7] == b[:, :7]).all() and (a[:, 21:] == b[:, 21:]).all()  # outside the box: the same pixels


@pytest.mark.parametrize("args,match", [
    (["refine", "--image", "{d}/missing.png", "--scale", "4"], "no such file"),
    (["refine", "--image", "{d}/corrupt.png", "--scale", "4"], "corrupt.png"),
    (["refine", "--image", "{d}/digit.png", "--scale", "3"], "--scale 3 is not supported"),
    (["refine", "--image", "{d}/digit.png", "--scale", "4"], "must be 7x7"),
    (["refine", "--image", "{d}/red.png", "--deblur", "1.5"], "colour image but the model is greyscale"),
    (["inpaint", "--image", "{d}/digit.png", "--mask", "{d}/empty_mask.png"], "mask is empty"),
    (["inpaint", "--image", "{d}/digit.png", "--mask", "{d}/small_mask.png"], "same size"),
    (["inpaint", "--image", "{d}/digit.png", "--mask", "circle"], "circle"),
    (["inpaint", "--image", "{d}/digit.png", "--mask", "box", "--watermark-key", "{d}/nokey.key"], "nokey.key"),
    (["sample", "--prompt", "a photo of a cat"], "cannot draw"),
    (["sample", "--prompt", "seven", "--label", "3"], "not both"),
])
def test_application_mistakes_exit_2(app_files, tmp_path, args, match):
    if "--prompt" in args:
        pytest.importorskip("sentence_transformers")
    r = run(*[a.format(d=app_files) for a in args], "--out", str(tmp_path / "o.png"))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert match in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o.png").exists()


@pytest.mark.skipif(not (BUNDLED.parent / "photos32" / "model.safetensors").exists(), reason="colour model not bundled")
def test_colorize_with_the_bundled_colour_model_keeps_the_grey_levels(tmp_path):
    import numpy as np
    from PIL import Image

    grey = (np.add.outer(np.arange(40), np.arange(64)) * 2 % 256).astype(np.uint8)  # 64x40, not the model's size
    Image.fromarray(grey).save(tmp_path / "g.png")
    r = run("colorize", "--image", str(tmp_path / "g.png"), "--steps", "20", "--out", str(tmp_path / "c.png"))
    assert r.returncode == 0, r.stderr
    out = Image.open(tmp_path / "c.png")
    assert out.mode == "RGB" and out.size == (64, 40)
    assert np.abs(np.asarray(out.convert("L")).astype(int) - grey).max() <= 1
    rgb = np.asarray(out).astype(int)
    assert (rgb.max(2) - rgb.min(2)).mean() > 3  # it has colour


def test_sample_fast_runs_the_bundled_student_and_refuses_conflicting_flags(tmp_path):
    import json

    from ddpm_guard.generator.checkpoint import FAST

    rec = json.loads(FAST.read_text())
    a = run("sample", "--fast", "--n", "10", "--out", str(tmp_path / "a"), "--seed", "5", "--json")
    assert a.returncode == 0, a.stderr
    files = sorted((tmp_path / "a").glob("sample_*.png"))
    assert len(files) == 10 and load_image(files[3]).shape == (1, 28, 28)
    b = run("sample", "--fast", "--n", "10", "--out", str(tmp_path / "b"), "--seed", "5")
    assert b.returncode == 0 and all(f.read_bytes() == (tmp_path / "b" / f.name).read_bytes() for f in files)
    assert rec["sampler"] == "ddim" and rec["fid"] <= rec["reference_fid"] + 5  # what --fast promises
    for extra, match in ((["--steps", "50"], "--fast picks"), (["--guidance", "9"], "guidance scales")):
        r = run("sample", "--fast", "--n", "2", "--out", str(tmp_path / "c"), *extra)
        assert r.returncode == 2 and match in r.stderr and "Traceback" not in r.stderr


def test_demo_creates_its_output_folder(tmp_path):
    import json
    import stat

    out = tmp_path / "new" / "demo"
    r = run("demo", "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert stat.S_IMODE((out / "demo.key").stat().st_mode) == 0o600
    marked = [row for row in rows if row["truth"] == "watermarked"]
    # a fresh random key each run and ~80 % clean detection (BENCHMARKS.md): P(fewer than 3 of 8) ~ 1e-3
    assert len(marked) == 8 and sum(row["watermarked"] for row in marked) >= 3
    edited = [row for row in rows if row["truth"].startswith("watermarked, ")]
    # the guided mark survives the demo's JPEG q50 re-save and square crop (measured 0.84-1.0 for such edits)
    assert len(edited) == 2 and sum(bool(row["watermarked"]) for row in edited) >= 1
    others = [row for row in rows if not row["truth"].startswith("watermarked")]
    assert len(others) == 5 and sum(bool(row["watermarked"]) for row in others) <= 1  # 1 % false positives each
    (tmp_path / "file").write_text("x")
    r = run("demo", "--out", str(tmp_path / "file"))
    assert r.returncode == 2 and "is a file" in r.stderr and "Traceback" not in r.stderr


def test_a_student_checkpoint_samples_on_its_own_grid_by_default(tmp_path):
    from ddpm_guard.generator.checkpoint import BUNDLED

    student = BUNDLED.parent / "mnist5k-student4"
    a = run("sample", "--checkpoint", str(student), "--n", "3", "--seed", "2", "--out", str(tmp_path / "a"))
    b = run("sample", "--checkpoint", str(student), "--n", "3", "--seed", "2", "--steps", "4", "--out", str(tmp_path / "b"))
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert all(f.read_bytes() == (tmp_path / "b" / f.name).read_bytes() for f in (tmp_path / "a").glob("sample_*.png"))


@pytest.mark.skipif(not (BUNDLED / "model.safetensors").exists(), reason="bundled model not trained yet")
def test_a_private_decoder_marks_and_reads_its_own_marks(tmp_path):
    """`sample --guided-mark --decoder D` steers toward D and `watermark verify --decoder D` reads with it; the
    bundled decoder does not read those marks. A missing or damaged decoder folder is one message, exit 2."""
    import json

    import torch

    from ddpm_guard.generator.checkpoint import load_model
    from ddpm_guard.watermark.guided.nets import load_decoder, MessageDecoder, save_decoder
    from ddpm_guard.watermark.guided.calibrate import calibrate

    # a private decoder: the bundled network with its 72 outputs in a secret order, so its chips are not the
    # bundled decoder's
    member = load_decoder(None)[0].embed
    perm = torch.randperm(72, generator=torch.Generator().manual_seed(5))
    state = {k: (v[perm] if k.startswith("head.") else v) for k, v in member.state_dict().items()}
    private = MessageDecoder(member.config)
    private.load_state_dict(state)
    dec = tmp_path / "private"
    dec.mkdir()
    save_decoder(dec, private, {})
    model, schedule, _ = load_model(None)
    calibrate(str(dec), model, schedule, n_samples=16, n_marks=0, log=lambda s: None)
    from ddpm_guard.watermark.keys import HEADER

    (tmp_path / "k.key").write_text(f"{HEADER}\n{bytes(range(32)).hex()}\n")  # a fixed key: the test is seeded
    (tmp_path / "k.key").chmod(0o600)
    made = run("sample", "--n", "4", "--out", str(tmp_path / "m"), "--watermark-key",
               str(tmp_path / "k.key"), "--guided-mark", "--decoder", str(dec), "--payload", "c0ffee42")
    assert made.returncode == 0, made.stderr
    files = [str(f) for f in sorted((tmp_path / "m").glob("sample_*.png"))]
    own, bundled = (run("watermark", "verify", "--fast", "--json", "--key", str(tmp_path / "k.key"), *extra, *files)
                    for extra in (["--decoder", str(dec)], []))
    assert own.returncode == 0 and bundled.returncode in (0, 1), (own.stderr, bundled.stderr)
    rows_own = [json.loads(line) for line in own.stdout.splitlines() if line.strip()]
    rows_bundled = [json.loads(line) for line in bundled.stdout.splitlines() if line.strip()]
    assert len(rows_own) == 4 and all(r["watermarked"] for r in rows_own), [r["p_value"] for r in rows_own]
    assert not any(r["watermarked"] for r in rows_bundled)
    for bad, match in ((tmp_path / "nothing", "no watermark decoder"), (tmp_path / "damaged", "not a readable")):
        if bad.name == "damaged":
            bad.mkdir()
            (bad / "decoder.json").write_text("{not json")
            (bad / "decoder.safetensors").write_bytes(b"junk")
        for args in (["sample", "--n", "1", "--out", str(tmp_path / "x"), "--watermark-key", str(tmp_path / "k.key"),
                      "--guided-mark", "--decoder", str(bad)],
                     ["watermark", "verify", "--fast", "--key", str(tmp_path / "k.key"), "--decoder", str(bad),
                      str(tmp_path / "m")]):
            r = run(*args)
            assert r.returncode == 2 and match in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    r = run("sample", "--n", "1", "--out", str(tmp_path / "x"), "--decoder", str(dec))
    assert r.returncode == 2 and "--guided-mark" in r.stderr
    # the scan's reader (watermark.verify.verify_images) takes the decoder too; scan and audit refuse a bad folder
    from ddpm_guard.generator.image_io import load_image
    from ddpm_guard.watermark.keys import load_key
    from ddpm_guard.watermark.verify import verify_images

    x = torch.stack([load_image(f, mode="L") for f in files])  # in [-1, 1]
    ring = {"k": load_key(tmp_path / "k.key")}
    own, bundled = (verify_images(x, ring, model, schedule, guided=True, deep=False, decoder=d)
                    for d in (str(dec), None))
    assert all(v.detected for v in own) and not any(v.detected for v in bundled)
    for args in (["scan", "--key", str(tmp_path / "k.key"), "--watermark-decoder", str(tmp_path / "nothing"), *files],
                 ["audit", str(tmp_path / "m"), "--out", str(tmp_path / "rep"), "--key", str(tmp_path / "k.key"),
                  "--watermark", "--watermark-decoder", str(tmp_path / "nothing")]):
        r = run(*args)
        assert r.returncode == 2 and "no watermark decoder" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_guided_mark_the_decoder_cannot_read_is_refused(tmp_path):
    """`sample --guided-mark` with a model whose images the decoder does not read (the colour model) was a silent
    x_T-only mark; it is one message, exit 2, before any sampling."""
    from ddpm_guard.generator.checkpoint import BUNDLED_COLOR

    assert run("keys", "new", "--out", str(tmp_path / "k.key")).returncode == 0
    r = run("sample", "--n", "1", "--out", str(tmp_path / "s"), "--checkpoint", str(BUNDLED_COLOR),
            "--watermark-key", str(tmp_path / "k.key"), "--guided-mark")
    assert r.returncode == 2 and "reads 28x28 grey images and this model makes 32x32 colour" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "s").exists()


def test_watermark_eval_guided_on_a_model_the_decoder_cannot_read_is_refused(tmp_path):
    """`watermark eval --guided` with the colour model silently evaluated the x_T mark instead; it is one message,
    exit 2, before any sampling."""
    from ddpm_guard.generator.checkpoint import BUNDLED_COLOR

    assert run("keys", "new", "--out", str(tmp_path / "k.key")).returncode == 0
    r = run("watermark", "eval", "--guided", "--key", str(tmp_path / "k.key"), "--checkpoint", str(BUNDLED_COLOR),
            "--n", "2", "--out", str(tmp_path / "e"))
    assert r.returncode == 2 and "does not read this model's images" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_weights_and_audit_refuse_what_they_cannot_do_before_the_work(tmp_path):
    """`weights` commands check their output place before training; an audit of a folder with no image writes its
    (empty) report and says so, exit 2; no traceback anywhere."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for args in (["weights", "family", "--kind", "vae", "--out", str(blocker / "sub"), "--steps", "1"],
                 ["weights", "reader", "make", "--n", "2", "--out", str(blocker / "m.safetensors")],
                 ["weights", "classifier", "--out", str(blocker / "c")]):
        r = run(*args)
        assert r.returncode == 2 and "cannot" in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    (tmp_path / "empty").mkdir()
    r = run("audit", str(tmp_path / "empty"), "--out", str(tmp_path / "rep"), "--json")
    assert r.returncode == 2 and "no image files" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert (tmp_path / "rep" / "report.json").is_file()
