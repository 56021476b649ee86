"""Queries as a visitor's page shows them: a photo fitted into a white 1024x768 page, or any
picture, with mild sensor-like noise (so the JPEG costs as much to decode as a real photo),
saved at quality 90. One maker for bench/search_latency.py's queries and bench/robust.py's
held-back products on a page, so both ask the same kind of picture."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

PAGE_SIZE = (1024, 768)


def noisy_jpeg(picture: Image.Image, seed: int) -> bytes:
    """The picture with Gaussian noise (sigma 3 grey levels), JPEG quality 90."""
    pixels = np.asarray(picture.convert("RGB"), dtype=np.float32)
    noise = np.random.default_rng(seed).normal(0.0, 3.0, pixels.shape).astype(np.float32)
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def page_jpeg(photo: bytes, seed: int, size: tuple[int, int] = PAGE_SIZE) -> bytes:
    """The photo (a file's bytes) fitted into a white page of `size`, as `noisy_jpeg`."""
    with Image.open(io.BytesIO(photo)) as im:
        picture = im.convert("RGB")
    scale = min(size[0] / picture.width, size[1] / picture.height)
    fitted = (round(picture.width * scale), round(picture.height * scale))
    page = Image.new("RGB", size, (255, 255, 255))
    page.paste(
        picture.resize(fitted, Image.Resampling.BICUBIC),
        ((size[0] - fitted[0]) // 2, (size[1] - fitted[1]) // 2),
    )
    return noisy_jpeg(page, seed)
