"""Every kind of bad input is refused with words a person understands."""

import io

import pytest
from PIL import Image

from gallery.imaging import ImageRejected, decode_image, encode_for_storage, make_thumbnail
from tests.images import encode, make_image_bytes, make_picture, png_header_only

LIMITS = {"max_bytes": 5 * 1024 * 1024, "max_pixels": 4_000_000}


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_accepts_allowed_formats(fmt):
    decoded = decode_image(make_image_bytes(1, fmt), **LIMITS)
    assert decoded.format == fmt
    assert decoded.image.mode in ("RGB", "RGBA")
    assert (decoded.width, decoded.height) == (240, 180)


def test_refuses_text():
    with pytest.raises(ImageRejected, match="not an image"):
        decode_image(b"<html>hello</html>", **LIMITS)


def test_refuses_empty():
    with pytest.raises(ImageRejected, match="empty"):
        decode_image(b"", **LIMITS)


def test_refuses_unsupported_format():
    data = encode(make_picture(2), "PPM")
    with pytest.raises(ImageRejected, match="Unsupported image format"):
        decode_image(data, **LIMITS)


def test_refuses_too_many_bytes():
    data = make_image_bytes(3, "PNG")
    with pytest.raises(ImageRejected, match="too large"):
        decode_image(data, max_bytes=len(data) - 1, max_pixels=LIMITS["max_pixels"])


def test_refuses_too_many_pixels_before_decoding():
    with pytest.raises(ImageRejected, match="too many pixels"):
        decode_image(png_header_only(30000, 30000), **LIMITS)


def test_refuses_truncated_jpeg():
    data = make_image_bytes(4, "JPEG", size=(640, 480))
    with pytest.raises(ImageRejected, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2], **LIMITS)


def test_refuses_corrupt_png():
    data = bytearray(make_image_bytes(5, "PNG"))
    data[60:200] = b"\x00" * 140
    with pytest.raises(ImageRejected, match="truncated or corrupt"):
        decode_image(bytes(data), **LIMITS)


def test_applies_exif_orientation_and_storage_drops_exif():
    im = make_picture(6, size=(200, 100))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° when displayed
    exif[0x8825] = {1: "N"}  # GPS info
    data = encode(im, "JPEG", exif=exif.tobytes())
    decoded = decode_image(data, **LIMITS)
    assert decoded.image.size == (100, 200)
    stored, ext = encode_for_storage(decoded.image)
    assert ext == "jpg"
    reopened = Image.open(io.BytesIO(stored))
    assert reopened.size == (100, 200)
    assert not reopened.getexif()


def test_png_after_html_is_reencoded():
    data = make_image_bytes(7, "PNG") + b"<script>alert(1)</script>"
    decoded = decode_image(data, **LIMITS)
    stored, _ = encode_for_storage(decoded.image)
    assert b"<script>" not in stored


def test_transparency_kept_as_png_and_thumbnail_is_small_jpeg():
    im = Image.new("RGBA", (400, 300), (255, 0, 0, 0))
    decoded = decode_image(encode(im, "PNG"), **LIMITS)
    _, ext = encode_for_storage(decoded.image)
    assert ext == "png"
    thumb = Image.open(io.BytesIO(make_thumbnail(decoded.image, 128)))
    assert thumb.format == "JPEG" and max(thumb.size) == 128
