import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_guard.generator.errors import GuardError
from ddpm_guard.generator.image_io import decode_image, load_image, make_grid, save_image, to_uint8


def _encode(img, fmt="PNG", **kw):
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_roundtrip_is_exact(tmp_path):
    x = torch.randint(0, 256, (1, 9, 7)).float() / 127.5 - 1
    p = save_image(x, tmp_path / "a.png")
    assert torch.allclose(load_image(p), x, atol=1e-6)


def test_modes_are_normalised():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent -> white background
    assert decode_image(_encode(rgba)).mode == "RGB"
    assert decode_image(_encode(rgba)).getpixel((0, 0)) == (255, 255, 255)
    i16 = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    out = decode_image(_encode(i16))
    assert out.mode == "L" and out.getpixel((0, 0)) == 255
    assert decode_image(_encode(Image.new("CMYK", (4, 4)), "TIFF")).mode == "RGB"
    assert decode_image(_encode(Image.new("P", (4, 4)))).mode == "RGB"
    assert decode_image(_encode(Image.new("RGB", (4, 4))), mode="L").mode == "L"


def test_first_frame_only():
    frames = [Image.new("L", (4, 4), v) for v in (10, 200)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    out = decode_image(buf.getvalue(), mode="L")
    assert abs(out.getpixel((0, 0)) - 10) <= 2


@pytest.mark.parametrize("data,match", [
    (b"", "empty"),
    (b"not an image at all", "not an image"),
    (_encode(Image.new("L", (32, 32)))[:-30], "corrupt|truncated"),
])
def test_bad_bytes_raise_clear_errors(data, match):
    with pytest.raises(GuardError, match=match):
        decode_image(data)


def _png_header_only(w, h):
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + chunk(b"IEND", b"")


def test_huge_dimensions_are_refused_before_decoding():
    with pytest.raises(GuardError, match="limit|bomb"):
        decode_image(_png_header_only(20000, 20000))


def test_byte_limit_and_disallowed_format(tmp_path):
    with pytest.raises(GuardError, match="byte limit"):
        decode_image(b"x" * 100, max_bytes=10)
    ico = _encode(Image.new("RGB", (16, 16)), "ICO")
    with pytest.raises(GuardError, match="allowed format"):
        decode_image(ico)
    with pytest.raises(GuardError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(GuardError, match="not a regular file"):
        load_image(tmp_path)


def test_exif_orientation_is_applied():
    img = Image.new("L", (6, 3))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    out = decode_image(_encode(img, "JPEG", exif=exif.tobytes()))
    assert out.size == (3, 6)


def test_uint8_conversion_clamps_without_wraparound():
    x = torch.tensor([[[-3.0, 3.0, 0.0]]])
    assert to_uint8(x).tolist() == [[0, 255, 128]]
    assert make_grid(torch.zeros(5, 1, 4, 4)).shape == (1, 2 * 6 + 2, 3 * 6 + 2)
