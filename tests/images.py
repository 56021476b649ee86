"""Synthetic test pictures: each seed draws a different scene, so items are told apart."""

import io
import random

from PIL import Image, ImageDraw


def make_picture(seed: int, size=(240, 180)) -> Image.Image:
    rng = random.Random(seed)
    w, h = size
    im = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(im)
    for _ in range(8):
        x, y = rng.randrange(w), rng.randrange(h)
        dx, dy = rng.randrange(w // 8, w // 2), rng.randrange(h // 8, h // 2)
        colour = tuple(rng.randrange(256) for _ in range(3))
        shape = rng.choice(["ellipse", "rectangle", "line"])
        if shape == "line":
            draw.line([x, y, x + dx, y + dy], fill=colour, width=rng.randrange(2, 10))
        else:
            getattr(draw, shape)([x, y, x + dx, y + dy], fill=colour)
    return im


def encode(im: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def make_image_bytes(seed: int, fmt: str = "JPEG", size=(240, 180), **kwargs) -> bytes:
    return encode(make_picture(seed, size), fmt, **kwargs)
