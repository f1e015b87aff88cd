"""Signed provenance metadata: local CA + leaf, C2PA sign/read, trust anchors, tampering, XMP."""

from __future__ import annotations

import io
import stat

import numpy as np
import pytest
from PIL import Image

from ddpm_guard.generator.errors import GuardError
from ddpm_guard.generator.image_io import decode_image
from ddpm_guard.provenance.c2pa import (iptc_source_type, load_signer, load_trust_anchors, new_signer, read_metadata,
                                sign_png)


@pytest.fixture(scope="module")
def signer_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("signer")
    new_signer(d, "Test Org")
    return d


def _png(seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def test_signer_files_and_private_keys_are_0600(signer_dir):
    for f in ("ca.key", "signer.key"):
        assert stat.S_IMODE((signer_dir / f).stat().st_mode) == 0o600
    s = load_signer(signer_dir)
    assert s.organization == "Test Org"
    assert "PRIVATE" not in repr(s)
    with pytest.raises(GuardError, match="refusing to overwrite"):
        new_signer(signer_dir)


def test_signed_png_reads_trusted_under_its_anchor_valid_without_and_keeps_pixels(signer_dir):
    src = _png()
    out = sign_png(src, load_signer(signer_dir), assertion={"account": "alice"})
    anchors = load_trust_anchors([signer_dir / "ca.pem"])
    trusted = read_metadata(out, anchors)
    assert trusted["c2pa"]["status"] == "Trusted"
    assert trusted["c2pa"]["digital_source_type"] == "trainedAlgorithmicMedia"
    assert trusted["c2pa"]["assertion"] == {"account": "alice"}
    assert trusted["iptc_digital_source_type"] == "trainedAlgorithmicMedia"
    assert read_metadata(out)["c2pa"]["status"] == "Valid"  # no anchors: the chain verifies but is not trusted
    assert np.array_equal(np.asarray(decode_image(out)), np.asarray(decode_image(src)))


def test_other_ca_is_not_trusted_and_tampering_reads_invalid(signer_dir, tmp_path):
    new_signer(tmp_path / "other", "Other")
    anchors = load_trust_anchors([signer_dir / "ca.pem"])
    foreign = sign_png(_png(1), load_signer(tmp_path / "other"))
    assert read_metadata(foreign, anchors)["c2pa"]["status"] == "Valid"
    out = bytearray(sign_png(_png(2), load_signer(signer_dir)))
    i = bytes(out).find(b"IDAT")
    out[i + 12] ^= 0xFF  # one byte of pixel data
    assert read_metadata(bytes(out), anchors)["c2pa"]["status"] == "Invalid"


def test_a_resave_strips_the_metadata(signer_dir):
    out = sign_png(_png(3), load_signer(signer_dir))
    buf = io.BytesIO()
    decode_image(out).save(buf, "PNG")
    meta = read_metadata(buf.getvalue())
    assert meta["c2pa"]["present"] is False and meta["iptc_digital_source_type"] is None


def test_plain_and_garbage_bytes_have_no_manifest():
    assert read_metadata(_png())["c2pa"] == {"present": False, "status": None, "digital_source_type": None,
                                             "signer": None, "assertion": None}
    assert read_metadata(b"\x89PNG garbage")["c2pa"]["present"] is False
    broken = read_metadata(b"\x89PNG\r\n\x1a\n" + b"caBX c2pa jumbf that is not one")  # never raises
    assert broken["c2pa"]["present"] is True and broken["c2pa"]["status"] == "Invalid"
    assert iptc_source_type(b"no xmp here") is None


def test_signer_with_open_key_permissions_is_refused(signer_dir, tmp_path):
    d = tmp_path / "s"
    new_signer(d)
    (d / "signer.key").chmod(0o644)
    with pytest.raises(GuardError, match="too open"):
        load_signer(d)
    with pytest.raises(GuardError, match="no C2PA signer"):
        load_signer(tmp_path / "missing")
