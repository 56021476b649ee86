"""Edits of situations a visitor meets that the first 22 kinds lack: a vignetting lens, a colour
cast (white balance), a letterboxed video frame, a dim noisy photo, a photo of a screen, a
quarter turn, motion blur. Measured only (`edits.HELD_OUT_KINDS`): no method or threshold
was chosen on them. Each works on a 4x enlargement of the catalogue photo, as a camera sees a
product bigger than the catalogue's small photo."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageFilter

from .edits_base import Edited, upscale


def _array(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB"), dtype=np.float32)


def _image(a: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def vignette(
    im: Image.Image, strength: str, rng: random.Random, backgrounds: Sequence[Image.Image]
) -> Edited:
    """Corners darkened by a lens: to 70 % (weak) or 35 % (strong) of their light."""
    big = _array(upscale(im, im.width * 4))
    h, w = big.shape[:2]
    y, x = np.mgrid[0:h, 0:w]
    d2 = ((x - w / 2) / (w / 2)) ** 2 + ((y - h / 2) / (h / 2)) ** 2
    fall = 0.15 if strength == "weak" else 0.32
    return Edited(_image(big * np.clip(1 - fall * d2, 0.2, 1)[..., None]), jpeg_quality=88)


def cast(im: Image.Image, strength: str, rng: random.Random, backgrounds: Sequence[Image.Image]) -> Edited:
    """A white balance gone warm or cold: red and blue scaled apart by 15 % (weak) or 30 %."""
    amount = 0.15 if strength == "weak" else 0.3
    warm = rng.choice([1, -1])
    gains = np.array([1 + warm * amount / 2, 1.0, 1 - warm * amount / 2], dtype=np.float32)
    return Edited(_image(_array(upscale(im, im.width * 4)) * gains), jpeg_quality=88)


def letterbox(
    im: Image.Image, strength: str, rng: random.Random, backgrounds: Sequence[Image.Image]
) -> Edited:
    """A video frame: the photo in the middle of black 16:9 (weak) or 21:9 (strong) bars."""
    big = upscale(im, im.width * 4)
    ratio = 16 / 9 if strength == "weak" else 21 / 9
    frame = Image.new("RGB", (round(big.height * ratio), big.height), (0, 0, 0))
    frame.paste(big, ((frame.width - big.width) // 2, 0))
    return Edited(frame, (((frame.width - big.width) // 2), 0, big.width, big.height), jpeg_quality=85)


def lowlight(
    im: Image.Image, strength: str, rng: random.Random, backgrounds: Sequence[Image.Image]
) -> Edited:
    """A dim room: light at 50 % with noise sigma 4 (weak), or 30 % with sigma 8 (strong)."""
    light, sigma = (0.5, 4) if strength == "weak" else (0.3, 8)
    big = _array(upscale(im, im.width * 4)) * light
    noisy = big + np.random.default_rng(rng.randint(0, 2**31)).normal(0, sigma, big.shape)
    return Edited(_image(noisy), jpeg_quality=85)


def screen_photo(
    im: Image.Image, strength: str, rng: random.Random, backgrounds: Sequence[Image.Image]
) -> Edited:
    """The photo shown on a screen and photographed: scan lines, a grey lift, a slight tilt
    (2 or 5 degrees) on a dark surround, and the camera's blur."""
    big = _array(upscale(im, im.width * 5))
    rows = np.arange(big.shape[0], dtype=np.float32)[:, None, None]
    depth = 0.1 if strength == "weak" else 0.2
    lines = _image(big * (1 - depth / 2 + depth / 2 * np.cos(rows * 1.3)) + 20)
    angle = (2 if strength == "weak" else 5) * rng.choice([-1, 1])
    turned = lines.rotate(angle, Image.Resampling.BICUBIC, expand=True, fillcolor=(30, 30, 30))
    return Edited(
        turned.filter(ImageFilter.GaussianBlur(1.0 if strength == "weak" else 1.6)), jpeg_quality=85
    )


def quarter_turn(
    im: Image.Image, strength: str, rng: random.Random, backgrounds: Sequence[Image.Image]
) -> Edited:
    """A photo taken sideways: turned a quarter either way (weak) or a half (strong)."""
    turn = (
        Image.Transpose.ROTATE_180
        if strength == "strong"
        else rng.choice([Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270])
    )
    return Edited(upscale(im, im.width * 4).transpose(turn), jpeg_quality=88)


def motion(im: Image.Image, strength: str, rng: random.Random, backgrounds: Sequence[Image.Image]) -> Edited:
    """A shaken camera: a horizontal or vertical streak of 5 (weak) or 9 (strong) pixels."""
    big = _array(upscale(im, im.width * 4))
    length = 5 if strength == "weak" else 9
    axis = rng.choice([0, 1])
    streak = sum(np.roll(big, shift, axis=axis) for shift in range(-(length // 2), length // 2 + 1))
    return Edited(_image(streak / length), jpeg_quality=88)


OUTSIDE_KINDS = {
    "vignette": vignette,
    "cast": cast,
    "letterbox": letterbox,
    "lowlight": lowlight,
    "screen_photo": screen_photo,
    "quarter_turn": quarter_turn,
    "motion": motion,
}
