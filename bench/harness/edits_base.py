"""What every edit returns (`Edited`) and the enlargement the edits share."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

Box = tuple[int, int, int, int]


@dataclass
class Edited:
    image: Image.Image
    box: Box | None = None  # where the item is, when it is part of a larger picture
    jpeg_quality: int | None = None  # encode as JPEG at this quality (PNG otherwise)

    def encode(self) -> tuple[bytes, str]:
        buf = io.BytesIO()
        if self.jpeg_quality:
            self.image.convert("RGB").save(buf, "JPEG", quality=self.jpeg_quality)
            return buf.getvalue(), "jpg"
        self.image.save(buf, "PNG")
        return buf.getvalue(), "png"


def upscale(im: Image.Image, width: int) -> Image.Image:
    height = max(1, round(im.height * width / im.width))
    return im.resize((width, height), Image.Resampling.BICUBIC)


def phone_photo(im: Image.Image) -> bytes:
    """A catalogue photo as a phone sends it: 768x1024, JPEG quality 90 (the scale benches'
    queries)."""
    buf = io.BytesIO()
    im.convert("RGB").resize((768, 1024), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=90)
    return buf.getvalue()
