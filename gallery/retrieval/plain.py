"""Plain pictures: how much a picture's pixels can tell. A flat colour, a gradient, soft
shading, two colours meeting along a line: their normalised correlation with smooth or
simple parts of many photos is near 1, so the pixel checks (`retrieval.pixels`) would take
them for close-ups of catalogue photos (a blue-to-orange gradient was "a close-up" of a
bottle's shading at 0.986; of 264 plain pictures of `bench/harness/plain_pictures.py`, 32
were labelled so). Three measures keep such pictures out: detail of the picture's own beyond
a smooth surface, detail that agrees with the photo's where it matches (not only the ramp),
and detail that does not all run one way (an edge, bands) in a small part."""

from __future__ import annotations

import cv2
import numpy as np

# A picture with no detail of its own (a flat colour, a gradient, soft shading: its grey
# levels, beyond a smooth surface, a quadratic in x and y, vary by this share of their spread
# or less, or by fewer levels) correlates with any smooth part of a photo: a blue-to-orange
# gradient was "a close-up" of a bottle's shading at 0.986. Its pixels identify nothing.
# Edited copies keep 0.36 or more (a strong vignette), those its pixels found 0.47 (777
# labelled copies of all kinds, seeds 777-783, two splits); gradients 0.01.
OWN_DETAIL_SHARE = 0.15
OWN_DETAIL_LEVELS = 2.0


def has_own_detail(grey: np.ndarray) -> bool:
    """Whether a picture (grey) has detail beyond a smooth surface (see OWN_DETAIL_SHARE)."""
    residual = float(less_smooth_surface(grey).std())
    return residual >= OWN_DETAIL_LEVELS and residual >= OWN_DETAIL_SHARE * float(grey.std())


def detail_agreement(template: np.ndarray, part: np.ndarray) -> float:
    """The correlation of two pictures' detail (each less its smooth surface): a ramp or soft
    shading correlates with any smooth part of a photo, whatever caption or marks are over
    it; the photo's own close-up keeps its detail too (`CopyThresholds.pixel_detail`)."""
    ours, theirs = less_smooth_surface(template), less_smooth_surface(part)
    denominator = float(np.sqrt((ours * ours).sum() * (theirs * theirs).sum()))
    return float((ours * theirs).sum()) / denominator if denominator > 0 else 0.0


def one_way(grey: np.ndarray) -> float:
    """How much of a picture's detail runs one way (the coherence of its structure tensor: 1
    for an edge or bands, near 0 for detail in every direction): a small picture of an edge
    matches any photo's edge (`CopyThresholds.pixel_small_one_way`)."""
    pixels = grey.astype(np.float32)
    gx, gy = cv2.Sobel(pixels, cv2.CV_32F, 1, 0), cv2.Sobel(pixels, cv2.CV_32F, 0, 1)
    xx, xy, yy = float((gx * gx).sum()), float((gx * gy).sum()), float((gy * gy).sum())
    total = xx + yy
    return float(np.hypot(xx - yy, 2 * xy) / total) if total > 0 else 1.0


def less_smooth_surface(grey: np.ndarray) -> np.ndarray:
    """Grey levels less their best quadratic surface in x and y (a flat colour, a ramp,
    shading): the detail left."""
    h, w = grey.shape
    y, x = np.mgrid[0:h, 0:w]
    x, y = x.ravel() / w - 0.5, y.ravel() / h - 0.5
    surface = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=1)
    levels = grey.ravel().astype(np.float64)
    coefficients, *_ = np.linalg.lstsq(surface, levels, rcond=None)
    detail: np.ndarray = levels - surface @ coefficients
    return detail
