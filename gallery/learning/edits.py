"""Edited copies for the near-duplicate protocol (shared with bench/neardup.py): each kind is
geometric/colour steps in order, then, if named, JPEG re-compression at quality 40."""

import io

from PIL import Image, ImageEnhance, ImageOps


def resize2x(im: Image.Image) -> Image.Image:
    return im.resize((im.width * 2, im.height * 2), Image.Resampling.BICUBIC)


def crop85(im: Image.Image) -> Image.Image:
    w, h = round(im.width * 0.85), round(im.height * 0.85)
    left, top = (im.width - w) // 2, (im.height - h) // 2
    return im.crop((left, top, left + w, top + h))


def bright20(im: Image.Image) -> Image.Image:
    return ImageEnhance.Brightness(im).enhance(1.2)


def mirror(im: Image.Image) -> Image.Image:
    return ImageOps.mirror(im)


STEPS = {"resize": resize2x, "crop": crop85, "bright": bright20, "mirror": mirror}
EDIT_KINDS = [
    "resize",
    "jpeg",
    "crop",
    "bright",
    "mirror",
    "crop+jpeg",
    "resize+bright+jpeg",
    "mirror+crop",
    "mirror+crop+bright+jpeg",
    "resize+crop+mirror",
]


def apply_edit(data: bytes, kind: str) -> tuple[bytes, str]:
    """Returns (encoded bytes, file name extension); PNG unless the edit says JPEG."""
    with Image.open(io.BytesIO(data)) as src:
        im = src.convert("RGB")
    steps = kind.split("+")
    for step in steps:
        if step != "jpeg":
            im = STEPS[step](im)
    buf = io.BytesIO()
    if "jpeg" in steps:
        im.save(buf, "JPEG", quality=40)
        return buf.getvalue(), "jpg"
    im.save(buf, "PNG")
    return buf.getvalue(), "png"
