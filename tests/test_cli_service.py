"""The service's CLI: API keys printed once and stored hashed, a local signer, `sample --sign`, and
`scan` giving the same rows as the service, with user mistakes as exit 2 and one message."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest


def run(*args, home=None, timeout=600):
    env = dict(os.environ)
    if home is not None:
        env["DDPM_GUARD_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "ddpm_guard.api.cli", *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def test_keys_new_api_prints_the_key_once_and_stores_a_hash(tmp_path):
    home = tmp_path / "home"
    r = run("keys", "new-api", "--account", "dana", home=home)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["account"] == "dana" and out["api_key"].startswith("dg_")
    assert out["api_key"].encode() not in (home / "guard.db").read_bytes()
    assert stat.S_IMODE((home / "keys" / "service.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    bad = run("keys", "new-api", "--account", "bad name!", home=home)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_signed_samples_scan_as_ours_from_the_cli(tmp_path):
    home = tmp_path / "home"
    assert run("keys", "new-api", "--account", "erin", home=home).returncode == 0
    s = run("sample", "--n", "2", "--steps", "20", "--seed", "1", "--out", str(tmp_path / "out"),
            "--watermark-key", str(home / "keys" / "service.key"), "--sign", str(home / "signer"))
    assert s.returncode == 0, s.stderr
    r = run("scan", "--json", str(tmp_path / "out" / "sample_00000_label0.png"), str(tmp_path / "nope.png"),
            home=home)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    # the key is fresh and random each run, and one image's mark clears the scan's alpha 0.001 only about
    # 70-80 % of the time (BENCHMARKS.md): the Trusted manifest makes it ours either way
    assert rows[0]["metadata"]["c2pa"]["status"] == "Trusted"
    assert rows[0]["verdict"] in ("watermarked-ours", "signed-synthetic")
    assert rows[1]["verdict"] == "unreadable" and "no such file" in rows[1]["explanation"]
    key_text = (home / "keys" / "service.key").read_text().split()[1]
    assert key_text not in r.stdout + r.stderr + s.stdout + s.stderr


@pytest.mark.parametrize("args,match", [
    (["scan", "x.png", "--trust-anchor", "/nonexistent.pem"], "no such trust-anchor file"),
    (["scan", "x.png", "--key", "/nonexistent.key"], "no such key file"),
    (["scan", "x.png", "--alpha", "2"], "alpha"),
    (["sample", "--n", "1", "--out", "OUT", "--sign", "/nonexistent"], "no C2PA signer"),
])
def test_cli_mistakes_exit_2_with_one_line(tmp_path, args, match):
    r = run(*[a.replace("OUT", str(tmp_path / "o")) for a in args], home=tmp_path / "h")
    assert r.returncode == 2, r.stderr
    assert match in r.stderr and "Traceback" not in r.stderr


def test_new_signer_refuses_to_overwrite(tmp_path):
    assert run("keys", "new-signer", "--out", str(tmp_path / "s")).returncode == 0
    r = run("keys", "new-signer", "--out", str(tmp_path / "s"))
    assert r.returncode == 2 and "refusing to overwrite" in r.stderr
