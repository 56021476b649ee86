"""Decoding untrusted image bytes with limits, and the derived files we store.

Every entry point (page, API, import, search query) decodes through `decode_image`, so
every one refuses the same bad inputs with the same words."""

from __future__ import annotations

import hashlib
import io
import math
import warnings
from dataclasses import dataclass

from PIL import Image, ImageFile, ImageOps, JpegImagePlugin, UnidentifiedImageError

ALLOWED_FORMATS = {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"}
FORMAT_NAMES = "JPEG, PNG, WebP, GIF, BMP or TIFF"
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageRejected(ValueError):
    """The bytes are not an image we accept; the message is for the person who sent them."""


@dataclass
class DecodedImage:
    image: Image.Image  # RGB or RGBA, orientation applied, no metadata
    format: str
    width: int  # full-size pixels as the picture is shown (after its EXIF orientation)
    height: int
    # How a JPEG was compressed, when `image` holds its pixels as stored (no reduced-scale
    # draft, no EXIF turn): a small copy can then be compared with a photo compressed alike.
    jpeg: JpegTables | None = None


@dataclass(frozen=True)
class JpegTables:
    """A JPEG's quantisation tables (PIL's order) and chroma subsampling (PIL's code, -1
    when unknown): saving other pixels with them gives those pixels the same artefacts."""

    tables: tuple[tuple[int, ...], ...]
    subsampling: int

    @classmethod
    def of(cls, im: Image.Image) -> JpegTables | None:
        tables = getattr(im, "quantization", None)
        if not tables:
            return None
        return cls(
            tuple(tuple(int(v) for v in tables[key]) for key in sorted(tables)),
            JpegImagePlugin.get_sampling(im),
        )


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _human_bytes(n: int) -> str:
    return f"{n / (1024 * 1024):.0f} MB" if n >= 1024 * 1024 else f"{n // 1024} KB"


ORIENTATION_TAG = 0x0112
# Each side at most this long, and no thinner than 1:MAX_ASPECT (a 1x70,000 strip passes the
# pixel limit but cannot be stored as a JPEG, thumbnailed or searched): long panoramas pass.
MAX_SIDE = 30_000
MAX_ASPECT = 50


def decode_image(
    data: bytes, *, max_bytes: int, max_pixels: int, draft_size: int | None = None
) -> DecodedImage:
    """Fully decode `data`, refusing what is too big, not an image, unsupported or corrupt.

    `draft_size` lets JPEG decode at a reduced scale, its longer side no shorter (for search
    queries, not for storage)."""
    if not data:
        raise ImageRejected("The file is empty.")
    if len(data) > max_bytes:
        raise ImageRejected(
            f"The file is too large ({_human_bytes(len(data))}); the limit is {_human_bytes(max_bytes)}."
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            fmt = str(im.format)
            width, height = im.size  # as stored, before any reduced-scale draft
            _check_header(fmt, (width, height), max_pixels)
            if draft_size and fmt in ("JPEG", "MPO"):
                # The longer side at least `draft_size`: a (draft_size, draft_size) request
                # would keep a 1024x768 photo whole, to be shrunk after at 3 ms a query.
                ratio = min(1.0, draft_size / max(width, height))
                im.draft("RGB", (max(1, math.ceil(width * ratio)), max(1, math.ceil(height * ratio))))
            im.load()
            orientation = im.getexif().get(ORIENTATION_TAG)
            as_stored = im.size == (width, height) and orientation in (None, 1)
            jpeg = JpegTables.of(im) if fmt in ("JPEG", "MPO") and as_stored else None
            if orientation in (5, 6, 7, 8):  # turned a quarter: axes swap
                width, height = height, width
            picture = _to_rgb(ImageOps.exif_transpose(im))
    except ImageRejected:
        raise
    except UnidentifiedImageError:
        raise ImageRejected(
            f"This file is not an image we can read; please upload a {FORMAT_NAMES} image."
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected("The image has too many pixels (it looks like a decompression bomb).") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        raise ImageRejected(f"The image is truncated or corrupt and cannot be decoded ({exc}).") from exc
    return DecodedImage(
        image=picture, format="JPEG" if fmt == "MPO" else fmt, width=width, height=height, jpeg=jpeg
    )


def _check_header(fmt: str, size: tuple[int, int], max_pixels: int) -> None:
    """What the header already tells: the format, and the size before anything is decoded."""
    if fmt not in ALLOWED_FORMATS:
        raise ImageRejected(f"Unsupported image format ({fmt}); please upload a {FORMAT_NAMES} image.")
    width, height = size
    if width * height > max_pixels:
        raise ImageRejected(
            f"The image has too many pixels ({width}×{height}); the limit is {max_pixels / 1e6:.0f} megapixels."
        )
    if width < 1 or height < 1:
        raise ImageRejected("The image has no pixels.")
    if max(width, height) > MAX_SIDE:
        raise ImageRejected(
            f"The image is too long ({width}×{height}); each side may be at most {MAX_SIDE:,} pixels."
        )
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageRejected(
            f"The image is too narrow ({width}×{height}); the longer side may be at most "
            f"{MAX_ASPECT} times the shorter."
        )


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGBA when the image has transparency, RGB otherwise (the first frame of animations)."""
    has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
    if has_alpha:
        return im.convert("RGBA")
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        im = im.point(lambda v: v / 256).convert("L")
    return im.convert("RGB")


def flatten(im: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """RGB on a white background: how a transparent product photo is seen."""
    if im.mode == "RGB":
        return im
    base = Image.new("RGB", im.size, background)
    base.paste(im, mask=im.getchannel("A") if im.mode == "RGBA" else None)
    return base


def encode_for_storage(im: Image.Image) -> tuple[bytes, str]:
    """Re-encode (dropping EXIF, GPS and anything smuggled after the pixels): PNG keeps
    transparency, everything else becomes a high-quality JPEG."""
    buf = io.BytesIO()
    if im.mode == "RGBA":
        im.save(buf, "PNG", optimize=False)
        return buf.getvalue(), "png"
    im.save(buf, "JPEG", quality=92)
    return buf.getvalue(), "jpg"


def make_thumbnail(im: Image.Image, size: int) -> bytes:
    thumb = flatten(im).copy()
    thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    thumb.save(buf, "JPEG", quality=85)
    return buf.getvalue()
