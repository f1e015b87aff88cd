"""The wheel carries every bundled weight file, under the one ddpm_guard namespace: a toolkit installed from it must not
lack a model, and it puts no package called `api` or `generator` into site-packages."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("generator", "detector", "watermark", "provenance", "api")


def test_wheel_ships_every_file_under_weights(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for pkg in PACKAGES:  # a clean copy: no build/ or egg-info of the working tree leaks into the wheel
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("ddpm_guard-*.whl")
    inside = set(zipfile.ZipFile(wheel).namelist())
    expected = {p.relative_to(ROOT).as_posix() for pkg in PACKAGES for p in (ROOT / pkg).rglob("*")
                if p.is_file() and "weights" in p.relative_to(ROOT).parts and "__pycache__" not in p.parts}
    assert expected, "no bundled weights found"
    assert {"generator/weights/fast.json", "detector/weights/default/model.safetensors"} <= expected
    missing = sorted(e for e in expected if f"ddpm_guard/{e}" not in inside)
    assert not missing, f"not in the wheel: {missing}"
    tops = {n.split("/")[0] for n in inside if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"ddpm_guard"}, tops
