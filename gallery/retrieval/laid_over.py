"""A verified copy's pixels laid over the catalogue photo by its homography
(`verify.Verification.homography`): how many of the photo's detailed pixels keep their
colours (`laid_colour_agreement`), and the laid-over picture itself (`retrieval.recolouring`)."""

from __future__ import annotations

import cv2
import numpy as np

from .pixels import AGREE_LEVELS, detailed

# A verified copy's colours are compared after one gain and offset (brightness, contrast),
# fitted twice on the share of pixel values that fit best, the gain within these bounds.
TONE_FITS = 2
TONE_KEPT = 0.7
TONE_GAINS = (0.6, 1.6)


def laid_colour_agreement(
    query: np.ndarray, item_colour: np.ndarray, to_item: np.ndarray, mirrored: bool = False
) -> float | None:
    """The share of the photo's detailed pixels (as in `QueryPixels.overlaid_copy`) that the
    query, laid over the photo by `to_item` (a homography from the query's pixels, of its
    mirror image when `mirrored`, to the photo as a unit square), shows in the same colours
    (after one brightness and contrast change, `_tone_fitted`); None when they hardly
    overlap. An edited copy keeps most of them outside its marks; another colour of the same
    shot, or another photo of a look-alike, few."""
    laid, inside = laid_over_photo(query, item_colour, to_item, mirrored)
    shown = detailed(item_colour) & inside
    if shown.sum() < 0.05 * shown.size:
        return None
    seen = laid[shown].astype(np.float32)
    fitted = _tone_fitted(item_colour[shown].astype(np.float32), seen)
    agree = np.abs(fitted - seen).max(axis=1) <= AGREE_LEVELS
    return float(agree.mean())


def laid_over_photo(
    query: np.ndarray, photo: np.ndarray, to_item: np.ndarray, mirrored: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The query's RGB pixels laid over the photo's by `to_item` (a homography from the
    query's pixels, of its mirror image when `mirrored`, to the photo as a unit square), at
    the photo's size, and where the query covers the photo."""
    ih, iw = photo.shape[:2]
    if mirrored:
        query = np.ascontiguousarray(query[:, ::-1])
    to_photo = np.diag([float(iw), float(ih), 1.0]) @ to_item
    scale = float(np.sqrt(abs(np.linalg.det(to_photo[:2, :2] / to_photo[2, 2]))))
    if scale < 1.0:  # shrink the query first: sampling it sparsely would alias
        qh, qw = query.shape[:2]
        size = (max(1, round(qw * scale)), max(1, round(qh * scale)))
        query = cv2.resize(query, size, interpolation=cv2.INTER_AREA)
        to_photo = to_photo @ np.diag([qw / size[0], qh / size[1], 1.0])
    laid: np.ndarray = cv2.warpPerspective(query, to_photo, (iw, ih), flags=cv2.INTER_LINEAR)
    inside: np.ndarray = (
        cv2.warpPerspective(np.full(query.shape[:2], 255, np.uint8), to_photo, (iw, ih)) > 250
    )
    return laid, inside


def _tone_fitted(photo: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """The photo's colours (n x 3) with the query's brightness and contrast: one gain and
    offset for all channels, fitted on the pixels that fit best (marks over some are left
    out). A gain per channel would turn an item of one colour on white into any other colour."""
    x, y = photo.ravel(), seen.ravel()
    kept = np.ones(len(x), bool)
    gain, offset = 1.0, 0.0
    for _ in range(TONE_FITS):
        design = np.stack([x[kept], np.ones(int(kept.sum()), np.float32)], axis=1)
        (gain, offset), *_ = np.linalg.lstsq(design, y[kept], rcond=None)
        gain = float(np.clip(gain, *TONE_GAINS))
        residual = np.abs(gain * x + offset - y)
        kept = residual <= np.quantile(residual, TONE_KEPT)
    fitted: np.ndarray = gain * photo + offset
    return fitted
