"""Synthetic test pictures: each seed draws a different scene, so items are told apart."""

import io
import random
import struct
import zlib

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


CATEGORY_COLOURS = {"red": (200, 40, 40), "green": (40, 170, 60), "blue": (40, 60, 200)}


def make_category_picture(category: str, seed: int, size=(64, 64)) -> Image.Image:
    """A picture whose category shows: its background colour, with random shapes on it."""
    rng = random.Random(seed)
    base = CATEGORY_COLOURS[category]
    im = Image.new("RGB", size, tuple(max(0, min(255, c + rng.randrange(-30, 31))) for c in base))
    draw = ImageDraw.Draw(im)
    w, h = size
    for _ in range(3):
        x, y = rng.randrange(w), rng.randrange(h)
        draw.ellipse([x, y, x + w // 4, y + h // 4], fill=tuple(rng.randrange(256) for _ in range(3)))
    return im


def make_category_folder(root, per_class: int = 12, splits=("",), size=(64, 64)):
    """root/[split/]<category>/<n>.png for every category; returns root."""
    from pathlib import Path

    root = Path(root)
    seed = 0
    for split in splits:
        for category in CATEGORY_COLOURS:
            folder = root / split / category if split else root / category
            folder.mkdir(parents=True, exist_ok=True)
            for n in range(per_class):
                seed += 1
                make_category_picture(category, seed, size).save(folder / f"{n:04d}.png")
    return root


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a huge size (a decompression bomb's header) with tiny data."""

    def chunk(kind, payload):
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 10))
        + chunk(b"IEND", b"")
    )
