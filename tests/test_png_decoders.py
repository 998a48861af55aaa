"""The data sets' PNG patches decode through libspng (imagecodecs) on the fast path: the same
pixels as OpenCV's libpng gives, on real IDC patches and on PNGs written other ways; anything
else takes the general path."""
from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from histoclass.data import decode
from histoclass.data.decode import BadImage, decode_bytes, decode_file, decode_plain_png

from conftest import shared_data, write_png


def _opencv(data: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def test_the_fast_path_uses_libspng_as_declared():
    # imagecodecs is a dependency: without it every patch would fall back to OpenCV, slower
    assert decode._spng_decode is not None


def test_real_idc_patches_decode_as_opencv_reads_them():
    files = sorted((shared_data("idc-sample") / "8864").glob("*/*.png"))[:300]
    assert len(files) == 300
    fast = 0
    for path in files:
        data = path.read_bytes()
        image = decode_plain_png(data, 50)
        if image is None:  # a sliver at the slide's edge: the general path
            continue
        fast += 1
        np.testing.assert_array_equal(image, _opencv(data), err_msg=str(path))
    assert fast > 250


@pytest.mark.parametrize("libspng", [True, False])
def test_pngs_written_other_ways_decode_alike(tmp_path, monkeypatch, libspng):
    if not libspng:
        monkeypatch.setattr(decode, "_spng_decode", None)
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (50, 50, 3), np.uint8)
    plain = write_png(tmp_path / "plain.png", rgb).read_bytes()
    Image.fromarray(rgb).save(tmp_path / "interlaced.png", interlace=1)
    interlaced = (tmp_path / "interlaced.png").read_bytes()
    Image.fromarray(rgb).save(tmp_path / "best.png", compress_level=9)
    best = (tmp_path / "best.png").read_bytes()
    header_end = 8 + 25  # a gamma and an sRGB chunk after IHDR: ignored by both decoders
    gamma = plain[:header_end] + _chunk(b"gAMA", struct.pack(">I", 100000)) + _chunk(b"sRGB", b"\0") + plain[header_end:]
    for name, data in [("plain", plain), ("interlaced", interlaced), ("best", best), ("gamma", gamma)]:
        image = decode_plain_png(data, 50)
        assert image is not None, name
        np.testing.assert_array_equal(image, rgb, err_msg=name)
    # not the fast path's kind: another size, grey, a transparent colour -> the general path
    assert decode_plain_png(plain, 40) is None
    grey = write_png(tmp_path / "grey.png", rgb[..., 0]).read_bytes()
    assert decode_plain_png(grey, 50) is None
    transparent = plain[:header_end] + _chunk(b"tRNS", b"\0\0\0\0\0\0") + plain[header_end:]
    assert decode_plain_png(transparent, 50) is None
    np.testing.assert_array_equal(decode_bytes(grey), np.repeat(rgb[..., :1], 3, axis=2))
    # a damaged patch is named by the checksum walk, whichever decoder would have run
    damaged = bytearray(plain)
    damaged[60] ^= 0xFF
    with pytest.raises(BadImage, match="damaged PNG"):
        decode_plain_png(bytes(damaged), 50)
    (tmp_path / "damaged.png").write_bytes(bytes(damaged))
    with pytest.raises(BadImage, match="damaged PNG"):
        decode_file(str(tmp_path / "damaged.png"), 50)
