"""Plain pictures that are in no catalogue: flat colours, gradients, soft edges between two
colours, shading, stripes, a photo blurred to nothing, a gradient under a caption or a logo,
a drawn silhouette. They have little detail of their own, so their pixels correlate with
smooth or simple parts of many photos; a visitor uploads such things (a wallpaper, a colour
swatch, a screenshot of an empty page) and none is a copy of a catalogue photo.

Seeded; every kind in turn, each with random colours, directions and softness, then a little
blur, noise and JPEG. Used by bench/robust.py as a third set of outside photos."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

WIDTH, HEIGHT = 768, 1024

_Maker = Callable[[np.random.Generator, Sequence[Image.Image]], np.ndarray]


def _grid() -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    return x / WIDTH, y / HEIGHT


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, 3).astype(np.float64)


def _blend(t: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    blended: np.ndarray = (1 - t[..., None]) * a + t[..., None] * b
    return blended


def _unit(t: np.ndarray) -> np.ndarray:
    unit: np.ndarray = (t - t.min()) / max(float(np.ptp(t)), 1e-9)
    return unit


def flat(rng: np.random.Generator, photos: Sequence[Image.Image]) -> np.ndarray:
    return np.broadcast_to(_colour(rng), (HEIGHT, WIDTH, 3)).copy()


def linear_gradient(rng: np.random.Generator, photos: Sequence[Image.Image]) -> np.ndarray:
    x, y = _grid()
    angle = rng.uniform(0, 2 * np.pi)
    return _blend(_unit(np.cos(angle) * x + np.sin(angle) * y), _colour(rng), _colour(rng))


def radial_gradient(rng: np.random.Generator, photos: Sequence[Image.Image]) -> np.ndarray:
    x, y = _grid()
    cx, cy = rng.uniform(0.1, 0.9, 2)
    return _blend(_unit(np.hypot(x - cx, y - cy)), _colour(rng), _colour(rng))


def soft_edge(rng: np.random.Generator, photos: Sequence[Image.Image]) -> np.ndarray:
    """Two colours meeting along a straight line, sharp to soft."""
    x, y = _grid()
    angle = rng.uniform(0, np.pi)
    across = np.cos(angle) * (x - rng.uniform(0.3, 0.7)) + np.sin(angle) * (y - rng.uniform(0.3, 0.7))
    return _blend(1 / (1 + np.exp(-across * rng.uniform(8, 80))), _colour(rng), _colour(rng))


def bands(rng: np.random.Generator, photos: Sequence[Image.Image]) -> np.ndarray:
    x, y = _grid()
    along = y if rng.random() < 0.5 else x
    count = int(rng.integers(2, 5))
    out = np.broadcast_to(_colour(rng), (HEIGHT, WIDTH, 3)).copy()
    for edge in np.sort(rng.uniform(0.15, 0.85, count)):
        t = 1 / (1 + np.exp(-(along - edge) * rng.uniform(15, 60)))
        out = _blend(t, out, _colour(rng))
    return out


def shading(rng: np.random.Generator, photos: Sequence[Image.Image]) -> np.ndarray:
    x, y = _grid()
    bowl = (
        rng.uniform(-1, 1) * (x - rng.uniform(0, 1)) ** 2 + rng.uniform(-1, 1) * (y - rng.uniform(0, 1)) ** 2
    )
    return _blend(_unit(bowl + rng.uniform(-0.5, 0.5) * y), _colour(rng), _colour(rng))


def stripes(rng: np.random.Generator, photos: Sequence[Image.Image]) -> np.ndarray:
    x, y = _grid()
    angle = rng.uniform(0, np.pi)
    phase = (np.cos(angle) * x + np.sin(angle) * y) * rng.uniform(4, 30)
    return _blend((np.sin(2 * np.pi * phase) > 0).astype(np.float64), _colour(rng), _colour(rng))


def blurred_photo(rng: np.random.Generator, photos: Sequence[Image.Image]) -> np.ndarray:
    photo = photos[int(rng.integers(len(photos)))].resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC)
    return np.asarray(photo.filter(ImageFilter.GaussianBlur(rng.uniform(12, 40))), dtype=np.float64)


def captioned_gradient(rng: np.random.Generator, photos: Sequence[Image.Image]) -> np.ndarray:
    picture = Image.fromarray(linear_gradient(rng, photos).astype(np.uint8))
    words = rng.choice(["photo by someone", "SALE", "new season", "wallpaper 4k", "@shop"])
    spot = (int(rng.integers(20, WIDTH // 2)), int(rng.integers(20, HEIGHT - 80)))
    ImageDraw.Draw(picture).text(spot, str(words), fill=tuple(int(c) for c in _colour(rng)), font_size=28)
    return np.asarray(picture, dtype=np.float64)


def gradient_with_logo(rng: np.random.Generator, photos: Sequence[Image.Image]) -> np.ndarray:
    picture = Image.fromarray(radial_gradient(rng, photos).astype(np.uint8))
    x, y = int(rng.integers(60, WIDTH - 160)), int(rng.integers(60, HEIGHT - 160))
    size = int(rng.integers(30, 100))
    draw = ImageDraw.Draw(picture)
    fill = tuple(int(c) for c in _colour(rng))
    if rng.random() < 0.5:
        draw.ellipse([x, y, x + size, y + size], fill=fill)
    else:
        draw.rectangle([x, y, x + size, y + size // 2], fill=fill)
    return np.asarray(picture, dtype=np.float64)


def silhouette(rng: np.random.Generator, photos: Sequence[Image.Image]) -> np.ndarray:
    """A flat shape drawn on white: a t-shirt, a bag or a shoe as a child draws it."""
    picture = Image.new("RGB", (WIDTH, HEIGHT), (255, 255, 255))
    cx, cy, s = WIDTH / 2 + rng.uniform(-80, 80), HEIGHT / 2 + rng.uniform(-80, 80), rng.uniform(0.6, 1.2)
    shapes = [
        [(-150, -380), (150, -380), (330, -220), (240, -120), (170, -190), (170, 380), (-170, 380),
         (-170, -190), (-240, -120), (-330, -220)],
        [(-250, -100), (250, -100), (300, 300), (-300, 300)],
        [(-300, 100), (-250, -60), (0, -100), (150, -20), (320, 60), (320, 140), (-300, 140)],
    ]  # fmt: skip
    outline = [(cx + s * px, cy + s * py) for px, py in shapes[int(rng.integers(len(shapes)))]]
    ImageDraw.Draw(picture).polygon(outline, fill=tuple(int(c) for c in _colour(rng)), outline=(60, 60, 60))
    return np.asarray(picture, dtype=np.float64)


KINDS: dict[str, _Maker] = {
    "flat": flat,
    "linear_gradient": linear_gradient,
    "radial_gradient": radial_gradient,
    "soft_edge": soft_edge,
    "bands": bands,
    "shading": shading,
    "stripes": stripes,
    "blurred_photo": blurred_photo,
    "captioned_gradient": captioned_gradient,
    "gradient_with_logo": gradient_with_logo,
    "silhouette": silhouette,
}


def plain_pictures(count: int, seed: int, photos: Sequence[Image.Image]) -> list[tuple[str, bytes]]:
    """`count` plain pictures as JPEG files, every kind in turn: (kind, bytes)."""
    rng = np.random.default_rng(seed)
    kinds = list(KINDS)
    out = []
    for n in range(count):
        kind = kinds[n % len(kinds)]
        pixels = KINDS[kind](rng, photos)
        picture = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        picture = picture.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.5)))
        noisy = np.asarray(picture, dtype=np.float64) + rng.normal(0, rng.uniform(0, 3), (HEIGHT, WIDTH, 3))
        buffer = io.BytesIO()
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(
            buffer, "JPEG", quality=int(rng.integers(60, 95))
        )
        out.append((kind, buffer.getvalue()))
    return out
