"""A picture's content (without its plain margins, `regions.content_box`) against a catalogue
photo's: a product photo fitted into a larger canvas (a shop's 1024x768 page, a poster) shows
its item's pixels at another size and position, with no edge of the photo itself when the
photo's margins are the canvas's colour, so neither its hash nor its whole vector is the
photo's. Cut to their content and compared at the photo's size, the two agree in colour and
in detail.

A photo's content is both its part without margins (however thin they are) and the whole
photo: on a canvas of another colour than its own background (a grey studio backdrop on a
white page), the whole photo is the content. The picture's content is laid on the photo's to
a fraction of a pixel first (`_aligned`): the two boxes are cut at different scales, and a
pixel off at the photo's size costs a detailed photo more agreement than a recolouring does.
Alignment lets any dark shoe on white fit another's outline, so the colour agreement alone
no longer tells copies from look-alikes: the agreement of the fine detail does (a high-pass
of both), inside the item's outline too (`INNER_BAND`). On 599 catalogue photos fitted into
1024x768 (two samples), their own photo was a copy (`tiers.CopyThresholds`: the bars and the
lead) for 546 (with plain colour at 0.96, before: 506); of the other candidates, only other
shades of the same shot and the catalogue's own repeats passed the bars."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image

from .regions import Box, content_boxes

# Shapes further apart (log width/height) are not the same content.
MAX_SHAPE_APART = 0.1
MIN_SIDE = 8
# Alignment: the largest shift (pixels of the photo) that is still the same cut, and the
# colour agreement below which no alignment makes a copy (the lowest a copy had: 0.90).
MAX_SHIFT = 3.0
ALIGN_FROM = 0.85
# The detail compared: each picture less its blur at this radius (pixels of the photo, at
# most 96 a side: `pixels.ITEM_SIDE`).
DETAIL_SIGMA = 1.5
# The detail of a plain item (a black wallet, a dark bag) is its outline, and any plain item
# of its shape cut to its outline matches it (two different black wallets: 0.954 in detail).
# Inside a band of this share of each side, a copy's detail still agrees (0.7 or more for
# those that pass in detail, on the samples above; those wallets: 0.43).
INNER_BAND = 0.15
# A photo's faint edges (a shadow, a pale sleeve, its JPEG's ringing) may or may not be cut
# as margin, here and in the picture: its content is cut at each of these tolerances.
CUT_TOLERANCES = (6, 12, 18, 30)
# First, both contents at this size (width, height), whatever their shape: a cut that agrees
# less than COARSE_FROM there cannot reach a copy's bar at full size (blurring only raises a
# copy's agreement), so only the few that do are compared in full (~0.02 ms against ~1).
COARSE_SIZE = (12, 16)
COARSE_FROM = 0.8


def _coarse(pixels: np.ndarray) -> np.ndarray:
    """The pixels at COARSE_SIZE, centred and of unit length (a dot product correlates)."""
    small = cv2.resize(pixels, COARSE_SIZE, interpolation=cv2.INTER_AREA).ravel()
    small = small - small.mean()
    norm = float(np.linalg.norm(small))
    coarse: np.ndarray = small / norm if norm > 0 else small
    return coarse


@dataclass(frozen=True)
class ContentPart:
    """One way to cut a catalogue photo's content: its pixels (RGB, float) and the share of
    the photo they cover."""

    pixels: np.ndarray
    share: float
    coarse: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "coarse", _coarse(self.pixels))


@dataclass(frozen=True)
class PictureContent:
    """A picture's content (RGB, float: `regions.content_box` of the query)."""

    pixels: np.ndarray
    coarse: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "coarse", _coarse(self.pixels))


@dataclass(frozen=True)
class ContentAgreement:
    colour: float  # correlation of the two contents' colours, aligned
    detail: float  # correlation of their fine detail (`DETAIL_SIGMA`), aligned
    inner_detail: float  # the same inside the item's outline (`INNER_BAND`)
    share: float  # the share of its photo the compared content covers


def photo_content(photo: np.ndarray) -> tuple[ContentPart, ...]:
    """A catalogue photo's (RGB, uint8) content: without its plain margins, and whole (made
    once per item, `search_content`)."""
    image = Image.fromarray(photo)
    cuts = content_boxes(image, CUT_TOLERANCES, min_share=0.0, max_share=1.0)
    boxes = {box for box in cuts if box is not None} | {Box.whole(image)}
    pixels = photo.astype(np.float32)
    return tuple(
        ContentPart(pixels[b.y : b.y + b.h, b.x : b.x + b.w], b.area / float(image.width * image.height))
        for b in sorted(boxes, key=lambda b: b.area)
    )


def content_agreement(content: PictureContent, parts: tuple[ContentPart, ...]) -> ContentAgreement | None:
    """How well a picture's content agrees with a photo's (`photo_content`), at the photo's
    content size: its cut of the content's shape that agrees best in colour, aligned; None
    when no cut has the content's shape and agrees at all at `COARSE_SIZE`."""
    near = [part for part in parts if _same_shape(content.pixels, part.pixels)]
    near = [part for part in near if float(content.coarse @ part.coarse) >= COARSE_FROM]
    fits = [
        (part, cv2.resize(content.pixels, part.pixels.shape[1::-1], interpolation=cv2.INTER_AREA))
        for part in near
    ]
    if not fits:
        return None
    colour, part, ours = max(
        ((_correlation(ours, part.pixels), part, ours) for part, ours in fits), key=lambda f: f[0]
    )
    if colour >= ALIGN_FROM:
        ours = _aligned(ours, part.pixels)
        colour = _correlation(ours, part.pixels)
    detail, theirs = _detail(ours), _detail(part.pixels)
    inner = _inside(detail), _inside(theirs)
    return ContentAgreement(colour, _correlation(detail, theirs), _correlation(*inner), part.share)


def _same_shape(content: np.ndarray, part: np.ndarray) -> bool:
    """Shapes close enough to be the same content, neither tiny."""
    h, w = part.shape[:2]
    qh, qw = content.shape[:2]
    if min(w, h) < MIN_SIDE or min(qw, qh) < MIN_SIDE:
        return False
    return abs(math.log((qw / qh) / (w / h))) <= MAX_SHAPE_APART


def _aligned(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """`ours` shifted (by ECC, to a fraction of a pixel) onto `theirs`; as it was when the
    shift does not converge or is too large to be the same cut."""
    target = cv2.cvtColor(theirs, cv2.COLOR_RGB2GRAY)
    moving = cv2.cvtColor(ours, cv2.COLOR_RGB2GRAY)
    warp = np.eye(2, 3, dtype=np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-4)
    try:
        # (no Gaussian pre-blur, 1: the pictures are small; the stubs lack this overload)
        _, warp = cv2.findTransformECC(  # type: ignore[call-overload]
            target, moving, warp, cv2.MOTION_TRANSLATION, criteria, None, 1
        )
    except cv2.error:  # no convergence (a flat picture): keep it as cut
        return ours
    if max(abs(float(warp[0, 2])), abs(float(warp[1, 2]))) >= MAX_SHIFT:
        return ours
    h, w = theirs.shape[:2]
    flags = cv2.INTER_LINEAR + cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(ours, warp, (w, h), flags=flags, borderMode=cv2.BORDER_REPLICATE)


def _detail(pixels: np.ndarray) -> np.ndarray:
    detail: np.ndarray = pixels - cv2.GaussianBlur(pixels, (0, 0), DETAIL_SIGMA)
    return detail


def _inside(pixels: np.ndarray) -> np.ndarray:
    """The pixels without a band of INNER_BAND of each side, where the item's outline is."""
    h, w = pixels.shape[:2]
    dy, dx = max(1, round(h * INNER_BAND)), max(1, round(w * INNER_BAND))
    return pixels[dy : h - dy, dx : w - dx]


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    norm = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum()) / norm if norm > 0 else 0.0
