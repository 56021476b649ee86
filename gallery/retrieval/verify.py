"""Geometric verification of a candidate: local features matched between the query and the
item's photo, and a RANSAC homography. Many consistent matches mean the query
shows this very photo (cropped, rotated, re-framed, overlaid, inside a larger picture...), not
a look-alike; the homography says where the item is in the query and how it was changed.

Two detectors (`Detector`): ORB first, which costs about 2 ms on a query (binary descriptors)
and verified as many edited copies as SIFT on 176 pairs of 22 kinds (more re-compressed and
watermarked ones, fewer with text over them); SIFT (about 30 ms: OpenCV doubles the picture
first) only when ORB verified nothing. The query's features are also taken from its mirror
image, so a mirrored copy verifies too. Catalogue photos are often small: each picture is
first resized to a fixed longer side (features of a 60x80 photo enlarged 4x matched; at its
own size there were a handful)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from functools import cached_property

import cv2
import faiss
import numpy as np
from PIL import Image, ImageOps

from .recolouring import Recolouring
from .regions import Box

QUERY_SIDE = 512
ITEM_SIDE = 240  # inliers are counted on a grid of the item at this size, whatever the detector
RATIO = 0.8  # Lowe's ratio test
INLIER_GRID = 6  # inliers on the same 6x6-pixel cell of the item count once
AGREEMENT_MIN_INLIERS = 10  # fewer matches never make a copy: the pixel check is skipped


class Detector(Enum):
    """A local-feature detector with the sides it sees the query and the item's photo at."""

    ORB = ("orb", QUERY_SIDE, 320)  # small patches: a 240-pixel item keeps few 31-pixel ones
    SIFT = ("sift", QUERY_SIDE, ITEM_SIDE)

    def __init__(self, key: str, query_side: int, item_side: int) -> None:
        self.key, self.query_side, self.item_side = key, query_side, item_side


_detectors = {
    Detector.ORB: cv2.ORB.create(nfeatures=1000, edgeThreshold=15, patchSize=15, fastThreshold=10),
    Detector.SIFT: cv2.SIFT.create(nfeatures=500, contrastThreshold=0.02),
}


@dataclass
class Features:
    detector: Detector
    points: np.ndarray  # n x 2, pixels of the original picture
    # n x 32 uint8 (ORB); n x 128 (SIFT: OpenCV's values are whole numbers 0-255, kept as
    # uint8 when `compact`, a quarter of float32's memory)
    descriptors: np.ndarray | None
    size: tuple[int, int]  # the original picture's width, height
    scale: float  # feature pixels per original pixel
    # The picture in grey at the features' scale, or None when `source` makes it on demand
    _grey: np.ndarray | None = None
    source: Image.Image | None = None  # the picture in grey at its own (smaller) size
    # ...or opens the picture (in colour) when it is first needed: features read from a file
    loader: Callable[[], Image.Image | None] | None = None

    def __len__(self) -> int:
        return len(self.points)

    @property
    def grey(self) -> np.ndarray:
        """The picture in grey at the features' scale (for the pixel check)."""
        if self._grey is not None:
            return self._grey
        if self.source is None and self.loader is not None:
            picture = self.loader()
            if picture is None:
                raise OSError("the item's photo cannot be read")
            self.source = picture.convert("L")
        assert self.source is not None
        return np.asarray(_resized(self.source, self.scale))

    def float_descriptors(self) -> np.ndarray:
        """The descriptors as the matcher takes them (SIFT's as float32); there must be some."""
        if self.descriptors is None:
            raise ValueError("no descriptors to match")
        if self.detector is Detector.SIFT:
            return self.descriptors.astype(np.float32, copy=False)
        return self.descriptors

    @cached_property
    def edges(self) -> np.ndarray:
        """Edge strength of `grey` (computed once: a query is laid over several items)."""
        return _edges(self.grey)


def features(
    image: Image.Image, side: int, detector: Detector = Detector.SIFT, *, compact: bool = False
) -> Features:
    """`compact`: kept small for a cache (the grey picture at its own size when that is
    smaller, remade when the pixel check needs it; SIFT descriptors as uint8): an item's
    features 100 kB -> about 25 kB, the same matches."""
    grey = image.convert("L")
    scale = side / max(grey.size)
    resized = _resized(grey, scale)
    keypoints, descriptors = _detectors[detector].detectAndCompute(np.asarray(resized), None)
    points = np.array([k.pt for k in keypoints], dtype=np.float32).reshape(-1, 2) / scale
    if not compact:
        return Features(detector, points, descriptors, image.size, scale, np.asarray(resized))
    if descriptors is not None and detector is Detector.SIFT:
        descriptors = descriptors.astype(np.uint8)
    if scale > 1:  # enlarged: its own size is the smaller one to keep
        return Features(detector, points, descriptors, image.size, scale, source=grey)
    return Features(detector, points, descriptors, image.size, scale, np.asarray(resized))


def _resized(grey: Image.Image, scale: float) -> Image.Image:
    size = (max(1, round(grey.width * scale)), max(1, round(grey.height * scale)))
    return grey.resize(size, Image.Resampling.BICUBIC)


def query_features(image: Image.Image, detector: Detector) -> Features:
    return features(image, detector.query_side, detector)


def mirrored_query_features(
    image: Image.Image, detector: Detector, unmirrored: Features | None = None
) -> Features:
    """The query's mirror image's features (points given in the mirror's pixels); SIFT's from
    the query's own when given (`mirrored_sift`)."""
    if detector is Detector.SIFT and unmirrored is not None and unmirrored.descriptors is not None:
        return mirrored_sift(unmirrored)
    return features(ImageOps.mirror(image), detector.query_side, detector)


# SIFT's descriptor is 4 x 4 cells of 8 orientation bins (OpenCV's layout: row, column, bin),
# each cell and bin relative to the keypoint's orientation. In the mirror image the keypoint's
# orientation mirrors too, and its frame's rows and the bins' turning sense reverse.
_MIRRORED_BINS = (-np.arange(8)) % 8


def mirrored_sift(query: Features) -> Features:
    """The SIFT features of the picture's mirror image, from its own: its detection (about 50
    ms of a 768x1024 photo's query) is not run twice. On 50 mirrored, cropped, enlarged and
    re-compressed copies of catalogue photos, verified as often as with the mirror's own
    detection (47 of 50; inliers 70.8 on average against 70.3)."""
    if query.detector is not Detector.SIFT or query.descriptors is None:
        raise ValueError("only SIFT features with descriptors are mirrored")
    grey = query.grey
    points = query.points.copy()
    points[:, 0] = (grey.shape[1] - 1) / query.scale - points[:, 0]
    cells = query.descriptors.reshape(-1, 4, 4, 8)[:, ::-1][..., _MIRRORED_BINS]
    descriptors = np.ascontiguousarray(cells.reshape(-1, 128))
    return Features(
        query.detector, points, descriptors, query.size, query.scale, np.ascontiguousarray(grey[:, ::-1])
    )


def item_features(image: Image.Image, detector: Detector) -> Features:
    return features(image, detector.item_side, detector, compact=True)


@dataclass
class Verification:
    inliers: int  # distinct, geometrically consistent matches
    box: Box  # the item's photo as it appears in the query (pixels of the query)
    mirrored: bool
    rotation: float  # degrees
    shown: float  # share of the item's photo visible in the query (< 1: a crop or a zoom)
    fills: float  # share of the query the item's photo fills (< 1: inside a larger picture)
    agreement: float = 0.0  # pixel correlation of the item's photo laid over the query (1: same pixels)
    # query pixels (of its mirror image when `mirrored`) -> the item's photo as a unit square
    homography: np.ndarray | None = None
    colour_agreement: float | None = None  # `laid_over.laid_colour_agreement`, when it was needed
    recolouring: Recolouring | None = None  # `recolouring.recolouring`, when it could be a copy


def _homography(query: Features, item: Features) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(H mapping query to item pixels, matched query points, matched item points) of the
    RANSAC inliers, or None."""
    if query.descriptors is None or item.descriptors is None or len(query) < 4 or len(item) < 4:
        return None
    if query.detector is not item.detector:
        raise ValueError("features of different detectors do not match")
    query_index, item_index = _ratio_matches(query, item)
    if len(query_index) < 6:
        return None
    src, dst = query.points[query_index], item.points[item_index]
    threshold = 0.02 * max(item.size)
    h, mask = cv2.findHomography(src, dst, cv2.USAC_DEFAULT, threshold)
    if h is None:
        return None
    keep = mask.ravel().astype(bool)
    return h, src[keep], dst[keep]


def _ratio_matches(query: Features, item: Features) -> tuple[np.ndarray, np.ndarray]:
    """(query features, their item features) whose nearest item feature is clearly nearer
    than the second (Lowe's ratio test). The nearest two by faiss's exact search: the pairs
    of OpenCV's brute-force matcher, ties included, 5x faster for ORB (12.6 -> 2.5 ms for
    900 x 800 features; checked on 60 catalogue photos for both detectors)."""
    descriptors = item.float_descriptors()
    index: faiss.IndexBinaryFlat | faiss.IndexFlatL2
    if item.detector is Detector.ORB:
        index = faiss.IndexBinaryFlat(descriptors.shape[1] * 8)
        ratio = RATIO
    else:
        index = faiss.IndexFlatL2(descriptors.shape[1])
        ratio = RATIO * RATIO  # faiss gives squared distances
    index.add(descriptors)
    # One thread: a search is one task among many, and OpenMP's idle threads spin. OpenMP
    # keeps the count per calling thread (a web process's request threads each start at one
    # per core), so it is set here, not once per process.
    faiss.omp_set_num_threads(1)
    distances, nearest = index.search(query.float_descriptors(), 2)
    good = np.flatnonzero(distances[:, 0] < ratio * distances[:, 1])
    return good, nearest[good, 0]


def _plausible(h: np.ndarray) -> bool:
    """Not a flip, a collapse or an extreme shear (which RANSAC finds among random matches)."""
    a = h[:2, :2] / h[2, 2]
    determinant = float(np.linalg.det(a))
    if determinant <= 0 or not 1 / 64 < determinant < 64:
        return False
    singular = np.linalg.svd(a, compute_uv=False)
    return bool(singular[0] / max(singular[1], 1e-9) <= 4)


def _project(h: np.ndarray, points: np.ndarray) -> np.ndarray:
    projected: np.ndarray = cv2.perspectiveTransform(points.reshape(-1, 1, 2).astype(np.float32), h).reshape(
        -1, 2
    )
    return projected


def _polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return float(abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2)


def verify(query: Features | None, mirrored: Features | None, item: Features) -> Verification | None:
    """The best consistent geometric match of the item's photo in the query and its mirror
    (each when its features are given)."""
    best: Verification | None = None
    for flipped, side in ((False, query), (True, mirrored)):
        if side is None:
            continue
        found = _homography(side, item)
        if found is None or not _plausible(found[0]):
            continue
        h, _, item_points = found
        cells = np.round(item_points / INLIER_GRID * ITEM_SIDE / max(item.size))
        inliers = len(np.unique(cells, axis=0))
        if best is not None and inliers <= best.inliers:
            continue
        best = _describe(h, inliers, flipped, side.size, item.size)
        best.homography = np.diag([1 / item.size[0], 1 / item.size[1], 1.0]) @ h
        if inliers >= AGREEMENT_MIN_INLIERS:
            best.agreement = agreement(h, side, item)
    return best


def in_whole_picture(v: Verification, to_part: np.ndarray, size: tuple[int, int]) -> Verification:
    """A verification made on a part of a picture (not mirrored), described in the whole
    picture of `size` (`to_part`: its pixels to the part's): the photo's outline there (not
    cut off at the part's edges), the share of it the item fills, the homography from its
    pixels."""
    if v.homography is None or v.mirrored:
        raise ValueError("only an unmirrored verification with its homography moves")
    h = v.homography @ to_part  # whole-picture pixels -> the item's photo as a unit square
    whole = _describe(h, v.inliers, False, size, (1, 1))
    whole.agreement, whole.homography = v.agreement, h
    return whole


def agreement(h: np.ndarray, query: Features, item: Features) -> float:
    """Normalised correlation of the query's pixels and the item's photo laid over them by the
    homography (grey, edges kept, fine noise smoothed away), where the two overlap. An edited
    copy of the photo keeps its pixels' pattern (0.5-1.0 outside overlays); another photo of a
    look-alike (the same model in the same pose, another colour) matches its features in places
    but not its pixels."""
    to_item = np.diag([item.scale, item.scale, 1.0]) @ h @ np.diag([1 / query.scale, 1 / query.scale, 1.0])
    qh, qw = query.grey.shape
    try:
        to_query = np.linalg.inv(to_item)
        grey = item.grey
    except (np.linalg.LinAlgError, OSError):  # (the item's photo gone since its features were kept)
        return 0.0
    warped = cv2.warpPerspective(grey, to_query, (qw, qh), flags=cv2.INTER_LINEAR)
    inside = cv2.warpPerspective(np.full(grey.shape, 255, np.uint8), to_query, (qw, qh)) > 250
    if inside.sum() < 400:
        return 0.0
    a = query.edges[inside]
    b = _edges(warped)[inside]
    a, b = a - a.mean(), b - b.mean()
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def _edges(grey: np.ndarray) -> np.ndarray:
    smooth = cv2.GaussianBlur(grey.astype(np.float32), (0, 0), 1.5)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1)
    magnitude: np.ndarray = cv2.magnitude(gx, gy)
    return magnitude


def _describe(
    h: np.ndarray, inliers: int, flipped: bool, query_size: tuple[int, int], item_size: tuple[int, int]
) -> Verification:
    qw, qh = query_size
    iw, ih = item_size
    item_corners = np.array([[0, 0], [iw, 0], [iw, ih], [0, ih]], dtype=np.float32)
    query_corners = np.array([[0, 0], [qw, 0], [qw, qh], [0, qh]], dtype=np.float32)
    inverse = np.linalg.inv(h)
    outline = _project(inverse, item_corners)  # the item's photo, in query pixels
    seen = _project(h, query_corners)  # the query, in the item's pixels
    clipped_seen = np.clip(seen, [0, 0], [iw, ih])
    shown = min(1.0, _polygon_area(clipped_seen) / float(iw * ih))
    clipped_outline = np.clip(outline, [0, 0], [qw, qh])
    fills = min(1.0, _polygon_area(clipped_outline) / float(qw * qh))
    x0, y0 = clipped_outline.min(axis=0)
    x1, y1 = clipped_outline.max(axis=0)
    if flipped:  # the mirror's pixels back to the query's
        x0, x1 = qw - x1, qw - x0
    box = Box(int(x0), int(y0), max(1, int(x1 - x0)), max(1, int(y1 - y0)))
    a = inverse[:2, :2]
    rotation = math.degrees(math.atan2(float(a[1, 0]), float(a[0, 0])))
    return Verification(inliers, box, flipped, rotation, shown, fills)
