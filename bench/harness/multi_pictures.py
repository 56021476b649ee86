"""Pictures that hold catalogue photos among other things, as a visitor screenshots or saves
them: a shop's listing page (a title bar, six photos with captions and prices), a collage of
four photos (with or without gaps, on white or a light colour), two photos side by side, and
a desktop screenshot of a product page (one photo, small, beside text under a header bar).

Each comes with the photos it holds and their boxes (pixels of the picture). Seeded: photos,
sizes, gaps and colours are drawn from `rng`. Used by bench/multi_item.py."""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

Photos = dict[str, Image.Image]  # stem -> photo


@dataclass
class Placed:
    stem: str
    box: tuple[int, int, int, int]  # x, y, w, h


@dataclass
class Picture:
    kind: str
    data: bytes  # JPEG
    items: list[Placed]


def _fitted(photo: Image.Image, w: int, h: int) -> Image.Image:
    scale = min(w / photo.width, h / photo.height)
    size = (max(1, round(photo.width * scale)), max(1, round(photo.height * scale)))
    return photo.resize(size, Image.Resampling.BICUBIC)


def _grid(
    rng: random.Random, photos: Photos, cols: int, rows: int, cell: tuple[int, int], gap: int, captions: bool
) -> tuple[Image.Image, list[Placed]]:
    cw, ch = cell
    top = 44 if captions else 0
    below = 20 if captions else 0
    size = (cols * cw + (cols + 1) * gap, top + rows * (ch + below) + (rows + 1) * gap)
    page_colour = (
        "white" if captions or rng.random() < 0.5 else tuple(rng.randrange(200, 256) for _ in range(3))
    )
    page = Image.new("RGB", size, page_colour)
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default()
    if captions:
        draw.rectangle((0, 0, size[0], 32), fill=(rng.randrange(40, 200), 50, 90))
        draw.text((10, 10), "Shop - New arrivals", fill="white", font=font)
    items = []
    for n in range(cols * rows):
        stem = rng.choice(sorted(photos))
        photo = _fitted(photos[stem], cw, ch)
        x0, y0 = gap + (n % cols) * (cw + gap), top + gap + (n // cols) * (ch + below + gap)
        x, y = x0 + (cw - photo.width) // 2, y0 + (ch - photo.height) // 2
        page.paste(photo, (x, y))
        items.append(Placed(stem, (x, y, photo.width, photo.height)))
        if captions:
            price = f"Item {rng.randrange(100, 999)}  ${rng.randrange(5, 99)}.99"
            draw.text((x0, y0 + ch + 4), price, fill="black", font=font)
    return page, items


def listing(rng: random.Random, photos: Photos) -> tuple[Image.Image, list[Placed]]:
    cell = rng.choice([(120, 160), (150, 200), (160, 213)])
    return _grid(rng, photos, 3, 2, cell, 12, True)


def collage(rng: random.Random, photos: Photos) -> tuple[Image.Image, list[Placed]]:
    cell = (rng.choice([120, 180, 240]), rng.choice([160, 240, 320]))
    return _grid(rng, photos, 2, 2, cell, rng.choice([0, 4, 10]), False)


def pair(rng: random.Random, photos: Photos) -> tuple[Image.Image, list[Placed]]:
    cell = rng.choice([(150, 200), (240, 320)])
    return _grid(rng, photos, 2, 1, cell, rng.choice([0, 8]), False)


def desktop(rng: random.Random, photos: Photos) -> tuple[Image.Image, list[Placed]]:
    width, height = rng.choice([(1366, 768), (1600, 1000), (1920, 1080)])
    page = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default()
    draw.rectangle((0, 0, width, 60), fill=(rng.randrange(60), rng.randrange(60, 120), 150))
    draw.text((20, 22), "MyShop   Men  Women  Kids  Sale", fill="white", font=font)
    stem = rng.choice(sorted(photos))
    h = rng.randint(int(height * 0.3), int(height * 0.6))
    photo = _fitted(photos[stem], 10 * h, h)
    x, y = rng.randint(40, width // 2 - photo.width), rng.randint(90, height - h - 20)
    page.paste(photo, (x, y))
    words = ["Cotton", "slim", "fit", "shirt", "Rs.", "1299", "Size", "M", "L", "XL", "free", "delivery"]
    for line in range(rng.randint(6, 14)):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(3, 9)))
        draw.text((x + photo.width + 60, 100 + 28 * line), text, fill=(30, 30, 30), font=font)
    draw.rectangle(
        (x + photo.width + 60, height - 200, x + photo.width + 260, height - 150), fill=(230, 60, 90)
    )
    return page, [Placed(stem, (x, y, photo.width, photo.height))]


KINDS: dict[str, Callable[[random.Random, Photos], tuple[Image.Image, list[Placed]]]] = {
    "listing": listing,
    "collage": collage,
    "pair": pair,
    "desktop": desktop,
}


def make(kind: str, rng: random.Random, photos: Photos) -> Picture:
    picture, items = KINDS[kind](rng, photos)
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=rng.randint(75, 92))
    return Picture(kind, out.getvalue(), items)
