"""The dataset audit: counts over a mixed folder, safe archives, resume after SIGKILL, Ray parity, and
the HTML report rendered in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from ddpm_guard.api.audit import run_audit
from ddpm_guard.api.audit.engine import ScanSpec
from ddpm_guard.api.audit.report import duplicate_groups
from ddpm_guard.generator.checkpoint import load_model
from ddpm_guard.generator.data import load_dataset
from ddpm_guard.generator.errors import GuardError
from ddpm_guard.generator.image_io import save_image
from ddpm_guard.generator.pipeline import generate


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """real/ (8 held-out digits), gen/nested/ (6 samples), wm/ (3 watermarked samples under a test key),
    a corrupt PNG, a text file, and an exact copy of one real digit."""
    from ddpm_guard.watermark.marking import generate_marked
    from ddpm_guard.watermark.keys import HEADER, load_key

    root = tmp_path_factory.mktemp("mixed")
    d = root / "data"
    held = load_dataset("mnist5k", "heldout")
    for i in range(8):
        save_image(held.images[i * 125], d / "real" / f"r{i}.png")
    model, schedule, _ = load_model(device="cpu")
    x, _ = generate(model, schedule, 6, steps=10, seed=11)
    for i, im in enumerate(x):
        save_image(im, d / "gen" / "nested" / f"g{i}.png")
    kf = root / "audit.key"  # a fixed test key, so the run is the same every time
    kf.write_text(f"{HEADER}\n{'5a' * 32}\n")
    kf.chmod(0o600)
    key = load_key(kf)
    w, _ = generate_marked(model, schedule, key, 7, 3, seed=1)
    for i, im in enumerate(w):
        save_image(im, d / "wm" / f"w{i}.png")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (d / "notes.txt").write_text("not an image")
    shutil.copy(d / "real" / "r0.png", d / "gen" / "copy_of_r0.png")
    return root


def test_mixed_folder_gives_the_expected_counts(mixed, tmp_path):
    # alpha 1e-4: the 17 unmarked files must not give a 1 % false positive by chance; marks score ~1e-10
    spec = ScanSpec(key_files=(str(mixed / "audit.key"),), alpha=1e-4, device="cpu")
    s = run_audit(mixed / "data", tmp_path / "rep", spec, progress=False)
    assert s["files"] == 8 + 6 + 3 + 3
    assert s["counts"]["unreadable"] == 2  # the corrupt PNG and the text file
    assert s["counts"]["watermarked-ours"] == 3
    assert s["counts"].get("synthetic", 0) + s["counts"].get("likely-real", 0) == 8 + 6 + 1
    rows = json.loads((tmp_path / "rep" / "report.json").read_text())["rows"]
    by = {Path(r["path"]).name: r for r in rows}
    assert "not an image file name" in by["notes.txt"]["error"]
    assert by["copy_of_r0.png"]["duplicate_group"] is not None
    assert by["copy_of_r0.png"]["duplicate_group"] == by["r0.png"]["duplicate_group"]
    assert by["copy_of_r0.png"]["sha256"] == by["r0.png"]["sha256"]
    assert all(r["verdict"] == "watermarked-ours" for n, r in by.items() if n.startswith("w"))
    csv_lines = (tmp_path / "rep" / "report.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 1 + s["files"] and csv_lines[0].startswith("path,verdict,p_synthetic,threshold")
    # each classifier verdict agrees with the threshold the file was judged at, one of the router's
    routes = s["routed_thresholds"]
    assert set(routes) >= {"clean", "jpeg", "blur"} and 0.5 <= s["threshold"] < 1
    judged = [r for r in rows if r["verdict"] in ("synthetic", "likely-real")]
    assert judged and all(round(r["threshold"], 3) in {round(t, 3) for t in routes.values()} for r in judged)
    assert all((r["verdict"] == "synthetic") == (r["p_synthetic"] > r["threshold"]) for r in judged)
    page = (tmp_path / "rep" / "report.html").read_text()
    assert f"clean {routes['clean']:.2f}" in page


def _evil_zip(path: Path, good: bytes) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("ok/good.png", good)
        z.writestr("../escape.png", good)
        z.writestr("/abs.png", good)
        link = zipfile.ZipInfo("link.png")
        link.external_attr = (0o120777 << 16)
        z.writestr(link, "/etc/passwd")


def test_archives_refuse_traversal_absolute_paths_and_links(mixed, tmp_path):
    good = (mixed / "data" / "real" / "r1.png").read_bytes()
    _evil_zip(tmp_path / "evil.zip", good)
    s = run_audit(tmp_path / "evil.zip", tmp_path / "rz", ScanSpec(device="cpu"), progress=False)
    rows = {r["path"].split("!", 1)[1]: r for r in json.loads((tmp_path / "rz" / "report.json").read_text())["rows"]}
    assert rows["ok/good.png"]["verdict"] != "unreadable"
    assert "traversal" in rows["../escape.png"]["error"]
    assert "absolute" in rows["/abs.png"]["error"]
    assert "link" in rows["link.png"]["error"]
    assert s["counts"]["unreadable"] == 3
    tpath = tmp_path / "evil.tar.gz"
    with tarfile.open(tpath, "w:gz") as t:
        t.add(mixed / "data" / "real" / "r1.png", arcname="fine.png")
        for name, kind in (("sym.png", tarfile.SYMTYPE), ("hard.png", tarfile.LNKTYPE)):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, "/etc/passwd"
            t.addfile(info)
        info = tarfile.TarInfo("../../up.png")
        info.size = len(good)
        import io
        t.addfile(info, io.BytesIO(good))
    run_audit(tpath, tmp_path / "rt", ScanSpec(device="cpu"), progress=False)
    rows = {r["path"].split("!", 1)[1]: r for r in json.loads((tmp_path / "rt" / "report.json").read_text())["rows"]}
    assert rows["fine.png"]["verdict"] != "unreadable"
    assert "link" in rows["sym.png"]["error"] and "link" in rows["hard.png"]["error"]
    assert "traversal" in rows["../../up.png"]["error"]
    assert not (tmp_path.parent / "up.png").exists() and not (tmp_path / "escape.png").exists()


def test_user_mistakes_are_clear_errors(tmp_path, mixed):
    with pytest.raises(GuardError, match="no such file"):
        run_audit(tmp_path / "missing", tmp_path / "o", ScanSpec(device="cpu"), progress=False)
    (tmp_path / "bad.zip").write_bytes(b"PK not really")
    with pytest.raises(GuardError, match="not a readable zip"):
        run_audit(tmp_path / "bad.zip", tmp_path / "o2", ScanSpec(device="cpu"), progress=False)
    (tmp_path / "empty").mkdir()
    s = run_audit(tmp_path / "empty", tmp_path / "o3", ScanSpec(device="cpu"), progress=False)
    assert s["files"] == 0 and (tmp_path / "o3" / "report.html").exists()
    with pytest.raises(GuardError, match="holds an audit with other inputs"):
        run_audit(mixed / "data", tmp_path / "o3", ScanSpec(device="cpu"), progress=False)


def test_duplicate_groups_are_transitive_and_exclude_singletons():
    rows = [{"phash": h} for h in ("0000000000000000", "0000000000000003", "000000000000000f", "ffffffffffffffff",
                                   None)]
    assert duplicate_groups(rows, max_bits=2) == [[0, 1, 2]]


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "ddpm_guard.api.cli", "audit", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _rows(out: Path) -> list[dict]:
    return json.loads((out / "report.json").read_text())["rows"]


def test_sigkill_mid_run_then_resume_equals_a_fresh_run(mixed, tmp_path):
    """A deep (watermark) audit is slow enough to kill in the middle: kill -9, rerun, compare."""
    data = tmp_path / "data"
    shutil.copytree(mixed / "data", data)
    for k in range(3):  # more files, so the kill lands mid-run
        shutil.copytree(mixed / "data" / "gen", data / f"more{k}")
    key = str(mixed / "audit.key")
    out = tmp_path / "killed"
    p = _cli(str(data), "--out", str(out), "--key", key, "--batch", "2", "--json")
    journal = out / "journal.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        if journal.exists() and journal.read_text().count("\n") >= 4:
            break
        time.sleep(0.02)
    assert p.poll() is None, "the audit finished before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    partial = journal.read_text().count("\n")
    total = len(list(data.rglob("*")))
    assert 0 < partial < total
    again = _cli(str(data), "--out", str(out), "--key", key, "--batch", "2", "--json")
    stdout, stderr = again.communicate(timeout=600)
    assert again.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["scored_this_run"] <= summary["files"] - partial + 1  # nothing scored twice (a torn line at most)
    lines = [json.loads(line) for line in journal.read_text().splitlines() if line.strip().endswith("}")]
    paths = [r["path"] for r in lines]
    assert len(paths) - len(set(paths)) <= 1
    fresh = _cli(str(data), "--out", str(tmp_path / "fresh"), "--key", key, "--json")
    assert fresh.wait(timeout=600) == 0
    assert _rows(out) == _rows(tmp_path / "fresh")
    # a changed file is scored again
    shutil.copy(data / "real" / "r2.png", data / "real" / "r1.png")
    third = _cli(str(data), "--out", str(out), "--key", key, "--json")
    stdout, _ = third.communicate(timeout=600)
    assert json.loads(stdout)["scored_this_run"] == 1


def test_ray_engine_rows_equal_the_local_engine(mixed, tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'ddpm-guard[ray]')")
    data = mixed / "data"
    spec = ScanSpec(device="cpu")
    run_audit(data, tmp_path / "local", spec, progress=False)
    try:
        run_audit(data, tmp_path / "ray", spec, engine="ray", progress=False, batch=4)
    except GuardError as e:
        if "could not start or join Ray" in str(e):
            pytest.skip(f"Ray cannot start here: {e}")
        raise
    assert _rows(tmp_path / "ray") == _rows(tmp_path / "local")


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_html_report_renders_in_headless_chromium(mixed, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    run_audit(mixed / "data", tmp_path / "rep", ScanSpec(device="cpu"), progress=False)
    html = tmp_path / "rep" / "report.html"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120)
    assert 'id="histogram"' in dom.stdout and 'id="counts"' in dom.stdout and "likely-real" in dom.stdout
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1000,1400", html.as_uri()],
                   capture_output=True, timeout=120)
    import numpy as np
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[0] >= 1000 and img.shape[1] >= 900
    bars = (np.abs(img - np.array([0x4A, 0x78, 0xB5])).sum(-1) < 30).sum()  # the histogram's bar colour
    borders = (np.abs(img - np.array([0xCC, 0xCC, 0xCC])).sum(-1) < 10).sum()  # the tables' cell borders
    assert bars > 200, "the plot did not render"
    assert borders > 500, "the tables did not render"


def test_training_set_gives_the_memorization_ratio(tmp_path):
    """A saved training image has a ratio near 0 (its nearest training image is itself); others do not."""
    train = load_dataset("digits", "train")
    save_image(train.images[5], tmp_path / "data" / "copied.png")
    save_image(-train.images[5], tmp_path / "data" / "inverted.png")
    run_audit(tmp_path / "data", tmp_path / "rep", ScanSpec(training="digits", device="cpu"), progress=False)
    rows = {Path(r["path"]).name: r for r in _rows(tmp_path / "rep")}
    assert rows["copied.png"]["memorization_ratio"] < 0.05  # 8-bit rounding of the saved copy keeps it off 0
    assert rows["inverted.png"]["memorization_ratio"] > 0.5
