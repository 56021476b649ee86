"""Edited copies of catalogue photos, as visitors make them: photographed inside a scene,
reframed, screenshotted, cropped, rotated, recoloured, re-compressed, overlaid, blurred...

Every kind has two strengths ("weak", "strong"). `apply(kind, strength, photo, rng,
backgrounds)` returns the edited picture and, for the kinds that place the item inside a
larger picture, the item's box (x, y, w, h) in its pixels, so a bench can also ask with the
box a visitor would draw. Deterministic for a given `rng`.

`TUNING_KINDS` are the kinds a method may be tuned on; `HELD_OUT_KINDS` are only measured,
so a bench can tell a method that generalises from one fitted to its own cases."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

from .edits_base import Edited
from .edits_base import upscale as _upscale
from .edits_outside import OUTSIDE_KINDS

STRENGTHS = ("weak", "strong")


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without sized default fonts
        return ImageFont.load_default()


def _words(rng: random.Random, n: int) -> str:
    vocabulary = [
        "new",
        "sale",
        "look",
        "style",
        "deal",
        "summer",
        "best",
        "price",
        "only",
        "today",
        "free",
        "ship",
        "wow",
        "love",
        "shop",
    ]
    return " ".join(rng.choice(vocabulary) for _ in range(n)).upper()


# --- the item inside a larger picture ----------------------------------------------------------


def scene(im: Image.Image, strength: str, rng: random.Random, backgrounds: Sequence[Image.Image]) -> Edited:
    """Pasted into a photo (a CIFAR-10 picture, upscaled) at 45-60 % (weak) or 30-45 %
    (strong) of the scene's side, somewhere random, lightly blurred edges, saved as a JPEG."""
    side = rng.choice([320, 384, 448])
    back = rng.choice(backgrounds).convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
    back = back.filter(ImageFilter.GaussianBlur(0.8))
    share = rng.uniform(0.45, 0.6) if strength == "weak" else rng.uniform(0.30, 0.45)
    item = im.resize(
        (
            max(8, round(side * share * im.width / max(im.size))),
            max(8, round(side * share * im.height / max(im.size))),
        ),
        Image.Resampling.BICUBIC,
    )
    x, y = rng.randint(0, side - item.width), rng.randint(0, side - item.height)
    back.paste(item, (x, y))
    return Edited(back, (x, y, item.width, item.height), jpeg_quality=85)


def canvas(im: Image.Image, strength: str, rng: random.Random, backgrounds: Sequence[Image.Image]) -> Edited:
    """Placed off-centre on a larger plain canvas (a reframed product shot): the item is 55 %
    (weak) or 35 % (strong) of the canvas's longer side."""
    share = 0.55 if strength == "weak" else 0.35
    width = round(im.width * 4)
    item = _upscale(im, round(width * share * im.width / max(im.size)))
    height = round(width * rng.uniform(0.8, 1.3))
    colour = rng.choice([(255, 255, 255), (240, 240, 235), (30, 30, 30), (200, 215, 230)])
    back = Image.new("RGB", (width, height), colour)
    x = rng.choice(
        [rng.randint(0, width // 8), rng.randint(width - item.width - width // 8, width - item.width)]
    )
    y = rng.randint(0, max(0, height - item.height))
    back.paste(item, (x, y))
    return Edited(back, (x, y, item.width, item.height))


def screenshot(
    im: Image.Image, strength: str, rng: random.Random, backgrounds: Sequence[Image.Image]
) -> Edited:
    """A phone screenshot (390 x 844) of a shopping app: status bar, title bar, the photo,
    price and caption text, a bottom navigation bar; strong adds a second product's tile and
    a cart banner over part of the photo's edge."""
    screen = Image.new("RGB", (390, 844), (250, 250, 250))
    draw = ImageDraw.Draw(screen)
    draw.rectangle((0, 0, 390, 44), fill=(20, 20, 20))
    draw.text((16, 14), "9:41", fill=(255, 255, 255), font=_font(16))
    draw.text((300, 14), "5G  87%", fill=(255, 255, 255), font=_font(14))
    draw.rectangle((0, 44, 390, 100), fill=(255, 255, 255))
    draw.text((16, 62), "< " + _words(rng, 2), fill=(30, 30, 30), font=_font(20))
    width = 360 if strength == "weak" else 300
    item = _upscale(im, width)
    if item.height > 520:
        item = item.resize((round(item.width * 520 / item.height), 520), Image.Resampling.BICUBIC)
    x, y = (390 - item.width) // 2 if strength == "weak" else 12, 110
    screen.paste(item, (x, y))
    text_y = y + item.height + 16
    draw.text((16, text_y), _words(rng, 3), fill=(20, 20, 20), font=_font(22))
    draw.text((16, text_y + 34), f"$ {rng.randint(9, 199)}.99", fill=(200, 30, 30), font=_font(24))
    draw.text((16, text_y + 70), _words(rng, 6).lower(), fill=(90, 90, 90), font=_font(15))
    if strength == "strong":
        other = rng.choice(backgrounds).convert("RGB").resize((64, 64))
        screen.paste(other, (318, 120))
        draw.rectangle((x, y + item.height - 40, x + item.width, y + item.height), fill=(255, 200, 0))
        draw.text((x + 10, y + item.height - 32), "ADD TO CART", fill=(0, 0, 0), font=_font(20))
    draw.rectangle((0, 780, 390, 844), fill=(255, 255, 255))
    for i in range(5):
        draw.ellipse((30 + i * 75, 800, 54 + i * 75, 824), outline=(120, 120, 120), width=2)
    return Edited(screen, (x, y, item.width, item.height))


# --- reframing -----------------------------------------------------------------------------------


def crop(im: Image.Image, strength: str, rng: random.Random, backgrounds: Sequence[Image.Image]) -> Edited:
    """An off-centre crop keeping 75 % (weak) or 55 % (strong) of the area."""
    area = 0.75 if strength == "weak" else 0.55
    ratio = rng.uniform(0.8, 1.25)
    w = min(im.width, round(im.width * math.sqrt(area * ratio)))
    h = min(im.height, round(im.height * math.sqrt(area / ratio)))
    x, y = rng.randint(0, im.width - w), rng.randint(0, im.height - h)
    return Edited(im.crop((x, y, x + w, y + h)))


def zoom(im: Image.Image, strength: str, rng: random.Random, backgrounds: Sequence[Image.Image]) -> Edited:
    """A zoom on a detail: 55 % (weak) or 40 % (strong) of each side, enlarged 3x."""
    share = 0.55 if strength == "weak" else 0.40
    w, h = max(4, round(im.width * share)), max(4, round(im.height * share))
    x, y = rng.randint(0, im.width - w), rng.randint(0, im.height - h)
    part = im.crop((x, y, x + w, y + h))
    return Edited(part.resize((w * 3, h * 3), Image.Resampling.BICUBIC))


def aspect(im: Image.Image, strength: str, rng: random.Random, backgrounds: Sequence[Image.Image]) -> Edited:
    """Stretched: 1.3x (weak) or 1.7x (strong), horizontally or vertically."""
    factor = 1.3 if strength == "weak" else 1.7
    if rng.random() < 0.5:
        return Edited(im.resize((round(im.width * factor), im.height), Image.Resampling.BICUBIC))
    return Edited(im.resize((im.width, round(im.height * factor)), Image.Resampling.BICUBIC))


# --- geometry ------------------------------------------------------------------------------------


def rotate(im: Image.Image, strength: str, rng: random.Random, backgrounds: Sequence[Image.Image]) -> Edited:
    """Rotated 4-8 degrees (weak) or 10-15 degrees (strong), either way, corners filled white."""
    angle = rng.uniform(4, 8) if strength == "weak" else rng.uniform(10, 15)
    angle *= rng.choice([-1, 1])
    big = _upscale(im, im.width * 3)
    return Edited(big.rotate(angle, Image.Resampling.BICUBIC, expand=True, fillcolor=(255, 255, 255)))


def perspective(
    im: Image.Image, strength: str, rng: random.Random, backgrounds: Sequence[Image.Image]
) -> Edited:
    """Seen at an angle (a photo of a screen or a page): corners pulled in by up to 8 % (weak)
    or 16 % (strong) of the side."""
    big = _upscale(im, im.width * 3)
    w, h = big.size
    pull = 0.08 if strength == "weak" else 0.16
    corners = [
        (rng.uniform(0, pull) * w, rng.uniform(0, pull) * h),
        (w - rng.uniform(0, pull) * w, rng.uniform(0, pull) * h),
        (w - rng.uniform(0, pull) * w, h - rng.uniform(0, pull) * h),
        (rng.uniform(0, pull) * w, h - rng.uniform(0, pull) * h),
    ]
    coefficients = _perspective_coefficients([(0, 0), (w, 0), (w, h), (0, h)], corners)
    warped = big.transform(
        (w, h), Image.Transform.PERSPECTIVE, coefficients, Image.Resampling.BICUBIC, fillcolor=(255, 255, 255)
    )
    return Edited(warped)


def _perspective_coefficients(target: list, source: list) -> list[float]:
    """The 8 coefficients PIL's PERSPECTIVE transform needs to map `target` corners to `source`."""
    import numpy as np

    rows = []
    for (x, y), (u, v) in zip(target, source):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    a = np.array(rows, dtype=float)
    b = np.array(source, dtype=float).reshape(8)
    return list(np.linalg.solve(a, b))


def mirror(im: Image.Image, strength: str, rng: random.Random, backgrounds: Sequence[Image.Image]) -> Edited:
    """Mirrored; strong also crops 85 % of the area off-centre."""
    flipped = ImageOps.mirror(im)
    return Edited(flipped if strength == "weak" else crop(flipped, "weak", rng, backgrounds).image)


# --- colour --------------------------------------------------------------------------------------


def grayscale(
    im: Image.Image, strength: str, rng: random.Random, backgrounds: Sequence[Image.Image]
) -> Edited:
    """Grey; strong also raises the contrast 40 %."""
    grey = ImageOps.grayscale(im).convert("RGB")
    return Edited(grey if strength == "weak" else ImageEnhance.Contrast(grey).enhance(1.4))


def hue(im: Image.Image, strength: str, rng: random.Random, backgrounds: Sequence[Image.Image]) -> Edited:
    """Hue turned by 25 degrees (weak) or 90 degrees (strong), saturation up 20 %."""
    shift = round((25 if strength == "weak" else 90) * 255 / 360) * rng.choice([-1, 1])
    h, s, v = im.convert("HSV").split()
    h = h.point(lambda value: (value + shift) % 256)
    out = Image.merge("HSV", (h, s, v)).convert("RGB")
    return Edited(ImageEnhance.Color(out).enhance(1.2))


def tone(im: Image.Image, strength: str, rng: random.Random, backgrounds: Sequence[Image.Image]) -> Edited:
    """Contrast and gamma: 0.75x / gamma 0.8 (weak) or 0.55x / gamma 1.8 (strong), randomly
    lighter or darker."""
    contrast, gamma = (0.75, 0.8) if strength == "weak" else (0.55, 1.8)
    if rng.random() < 0.5:
        gamma = 1 / gamma
    out = ImageEnhance.Contrast(im).enhance(contrast)
    table = [round(255 * (i / 255) ** gamma) for i in range(256)] * 3
    return Edited(out.point(table))


# --- quality -------------------------------------------------------------------------------------


def jpeg(im: Image.Image, strength: str, rng: random.Random, backgrounds: Sequence[Image.Image]) -> Edited:
    """Re-compressed at quality 25 (weak) or 8 (strong)."""
    return Edited(im, jpeg_quality=25 if strength == "weak" else 8)


def thumbnail(
    im: Image.Image, strength: str, rng: random.Random, backgrounds: Sequence[Image.Image]
) -> Edited:
    """Half size (weak) or a third (strong), saved as a JPEG at quality 30."""
    factor = 0.5 if strength == "weak" else 0.33
    small = im.resize(
        (max(8, round(im.width * factor)), max(8, round(im.height * factor))), Image.Resampling.BILINEAR
    )
    return Edited(small, jpeg_quality=30)


def blur(im: Image.Image, strength: str, rng: random.Random, backgrounds: Sequence[Image.Image]) -> Edited:
    """Gaussian blur of radius 1 (weak) or 2 (strong) pixels of the catalogue photo."""
    return Edited(im.filter(ImageFilter.GaussianBlur(1.0 if strength == "weak" else 2.0)))


def noise(im: Image.Image, strength: str, rng: random.Random, backgrounds: Sequence[Image.Image]) -> Edited:
    """Sensor noise: Gaussian, sigma 8 (weak) or 20 (strong) grey levels, on a 2x enlargement."""
    import numpy as np

    big = _upscale(im, im.width * 2)
    sigma = 8 if strength == "weak" else 20
    noisy = np.asarray(big, dtype=np.float32) + np.random.default_rng(rng.randint(0, 2**31)).normal(
        0, sigma, (big.height, big.width, 3)
    )
    return Edited(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)), jpeg_quality=90)


# --- overlays ------------------------------------------------------------------------------------


def text(im: Image.Image, strength: str, rng: random.Random, backgrounds: Sequence[Image.Image]) -> Edited:
    """A caption written over the photo: one line (weak) or three bold lines (strong)."""
    big = _upscale(im, im.width * 4)
    draw = ImageDraw.Draw(big)
    lines = 1 if strength == "weak" else 3
    size = big.width // (12 if strength == "weak" else 8)
    for n in range(lines):
        y = rng.randint(0, big.height - size - 1) if lines == 1 else round(big.height * (0.2 + 0.25 * n))
        colour = rng.choice([(255, 255, 255), (0, 0, 0), (230, 30, 30)])
        draw.text((rng.randint(0, big.width // 5), y), _words(rng, 2), fill=colour, font=_font(size))
    return Edited(big)


def banner(im: Image.Image, strength: str, rng: random.Random, backgrounds: Sequence[Image.Image]) -> Edited:
    """A solid banner with text across the top or bottom: 15 % (weak) or 28 % (strong) of the
    height."""
    big = _upscale(im, im.width * 4)
    draw = ImageDraw.Draw(big)
    height = round(big.height * (0.15 if strength == "weak" else 0.28))
    top = 0 if rng.random() < 0.5 else big.height - height
    colour = rng.choice([(220, 30, 40), (20, 20, 20), (250, 200, 0)])
    draw.rectangle((0, top, big.width, top + height), fill=colour)
    draw.text(
        (big.width // 10, top + height // 4), _words(rng, 2), fill=(255, 255, 255), font=_font(height // 2)
    )
    return Edited(big)


def sticker(im: Image.Image, strength: str, rng: random.Random, backgrounds: Sequence[Image.Image]) -> Edited:
    """Emoji-like stickers (coloured discs with a face) covering about 8 % (weak) or 20 %
    (strong) of the photo."""
    big = _upscale(im, im.width * 4)
    draw = ImageDraw.Draw(big)
    cover = 0.08 if strength == "weak" else 0.20
    count = 1 if strength == "weak" else 2
    radius = round(math.sqrt(cover * big.width * big.height / count / math.pi))
    for _ in range(count):
        cx, cy = rng.randint(radius, big.width - radius), rng.randint(radius, big.height - radius)
        fill = rng.choice([(255, 205, 0), (255, 80, 150), (80, 200, 255)])
        draw.ellipse(
            (cx - radius, cy - radius, cx + radius, cy + radius), fill=fill, outline=(0, 0, 0), width=3
        )
        eye = max(2, radius // 6)
        for dx in (-radius // 3, radius // 3):
            draw.ellipse(
                (cx + dx - eye, cy - radius // 4 - eye, cx + dx + eye, cy - radius // 4 + eye), fill=(0, 0, 0)
            )
        draw.arc((cx - radius // 2, cy, cx + radius // 2, cy + radius // 2), 0, 180, fill=(0, 0, 0), width=3)
    return Edited(big)


def watermark(
    im: Image.Image, strength: str, rng: random.Random, backgrounds: Sequence[Image.Image]
) -> Edited:
    """A tiled, slanted, semi-transparent text watermark: opacity 25 % (weak) or 45 % (strong)."""
    big = _upscale(im, im.width * 4).convert("RGBA")
    layer = Image.new("RGBA", (big.width * 2, big.height * 2), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    alpha = round(255 * (0.25 if strength == "weak" else 0.45))
    size = big.width // 9
    for y in range(0, layer.height, size * 3):
        for x in range(0, layer.width, size * 6):
            draw.text((x, y), "SAMPLE", fill=(255, 255, 255, alpha), font=_font(size))
            draw.text((x + 2, y + 2), "SAMPLE", fill=(0, 0, 0, alpha // 2), font=_font(size))
    layer = layer.rotate(rng.uniform(20, 40), Image.Resampling.BICUBIC)
    left, top = (layer.width - big.width) // 2, (layer.height - big.height) // 2
    big.alpha_composite(layer.crop((left, top, left + big.width, top + big.height)))
    return Edited(big.convert("RGB"))


# --- combinations --------------------------------------------------------------------------------


def combo(im: Image.Image, strength: str, rng: random.Random, backgrounds: Sequence[Image.Image]) -> Edited:
    """Crop, then brighten and re-compress (weak); mirror, rotate, caption and re-compress
    (strong)."""
    if strength == "weak":
        part = crop(im, "weak", rng, backgrounds).image
        return Edited(ImageEnhance.Brightness(part).enhance(1.2), jpeg_quality=40)
    out = rotate(ImageOps.mirror(im), "weak", rng, backgrounds).image
    out = text(out.resize((im.width, im.height)), "weak", rng, backgrounds).image
    return Edited(out, jpeg_quality=50)


def framed(im: Image.Image, strength: str, rng: random.Random, backgrounds: Sequence[Image.Image]) -> Edited:
    """A photo of the photo: a coloured border (a frame or a mount) around the enlarged photo,
    slightly rotated and, when strong, inside a scene."""
    big = _upscale(im, im.width * 3)
    border = round(big.width * (0.08 if strength == "weak" else 0.15))
    frame = ImageOps.expand(
        big, border=border, fill=rng.choice([(60, 40, 20), (230, 230, 230), (10, 10, 10)])
    )
    frame = frame.rotate(rng.uniform(-4, 4), Image.Resampling.BICUBIC, expand=True, fillcolor=(255, 255, 255))
    if strength == "weak":
        return Edited(frame, jpeg_quality=80)
    side = round(max(frame.size) * 1.6)
    back = rng.choice(backgrounds).convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
    x, y = rng.randint(0, side - frame.width), rng.randint(0, side - frame.height)
    back.paste(frame, (x, y))
    return Edited(back, (x, y, frame.width, frame.height), jpeg_quality=80)


Edit = Callable[[Image.Image, str, random.Random, Sequence[Image.Image]], Edited]

KINDS: dict[str, Edit] = {
    "scene": scene,
    "canvas": canvas,
    "screenshot": screenshot,
    "crop": crop,
    "zoom": zoom,
    "aspect": aspect,
    "rotate": rotate,
    "perspective": perspective,
    "mirror": mirror,
    "grayscale": grayscale,
    "hue": hue,
    "tone": tone,
    "jpeg": jpeg,
    "thumbnail": thumbnail,
    "blur": blur,
    "noise": noise,
    "text": text,
    "banner": banner,
    "sticker": sticker,
    "watermark": watermark,
    "combo": combo,
    "framed": framed,
    **OUTSIDE_KINDS,  # (last: the first kinds' queries stay those of earlier runs)
}
# Measured only: never used to choose a method or a threshold.
HELD_OUT_KINDS = ("perspective", "watermark", "noise", "framed", *OUTSIDE_KINDS)
TUNING_KINDS = tuple(k for k in KINDS if k not in HELD_OUT_KINDS)
# The item is a part of the picture: the bench also asks with the item's box.
REGION_KINDS = ("scene", "canvas", "screenshot", "framed", "letterbox")


def apply(
    kind: str, strength: str, photo: Image.Image, rng: random.Random, backgrounds: Sequence[Image.Image]
) -> Edited:
    return KINDS[kind](photo.convert("RGB"), strength, rng, backgrounds)
