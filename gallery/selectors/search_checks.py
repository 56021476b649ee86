"""The checks of a search's candidates (`search_by_image`): local features with a homography
(`retrieval.verify`), and, when no copy is found, the picture's pixels looked for in the best
candidates' photos (`retrieval.pixels`). Each candidate's stored photo is read once per
process for each."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from django.conf import settings
from django.core.files.storage import default_storage
from PIL import Image as PILImage

from ..imaging import JpegTables, flatten
from ..models import Image
from ..retrieval.features_file import decode, stored_name
from ..retrieval.laid_over import laid_colour_agreement
from ..retrieval.params import RetrievalParams
from ..retrieval.pixels import ITEM_SIDE as ITEM_PIXELS_SIDE
from ..retrieval.pixels import (
    PixelMatch,
    QueryPixels,
    best_overlaid_copy,
    best_pixel_match,
    best_smaller_copy,
    item_colour,
    item_pixels,
    screened,
)
from ..retrieval.recolouring import recolouring
from ..retrieval.regions import Box
from ..retrieval.tiers import coloured_candidate, distinct_nearest_hash, verified_copy
from ..retrieval.verify import (
    Detector,
    Features,
    Verification,
    in_whole_picture,
    item_features,
    mirrored_query_features,
    query_features,
    verify,
)
from .search import RegionScore, SearchIndex


@dataclass
class Candidate:
    cosine: float = -1.0
    region: Box | None = None  # None: the whole picture
    hash_distance: int | None = None
    hash_variant: int = 0
    hash_gap: int = 0  # bits closer than any other item (set for the nearest hash only)
    detail_cosine: float = -1.0  # the picture's detail view to the item's nearest detail
    # The query's object (`Query.objects`) nearest to it, if any, and how near: apart from
    # `cosine`, which ranks look-alikes (a single earring of a pair, cropped tight, is nearer
    # to other single earrings than the pair's own photo is to the picture).
    object: Box | None = None
    object_cosine: float = -1.0

    @property
    def shown_cosine(self) -> float:
        """The cosine a result shows: of the whole picture, a region or an object of it."""
        return max(self.cosine, self.object_cosine)

    @property
    def copy_cosine(self) -> float:
        """The vectors' agreement a verified copy needs: of the whole photo, a detail, or an
        object of the picture."""
        return max(self.cosine, self.detail_cosine, self.object_cosine)


@dataclass
class Query:
    """One search's state: the picture, its copy-model vectors and what they found."""

    picture: PILImage.Image
    index: SearchIndex
    vector: np.ndarray
    hashes: np.ndarray
    candidates: dict[int, Candidate] = field(default_factory=dict)
    regions: list[RegionScore] = field(default_factory=list)
    # Separate objects on a plain background (`regions.object_boxes`): each is searched and
    # its candidates verified on it alone; a copy of one of several does not end the search.
    objects: list[Box] = field(default_factory=list)
    jpeg: JpegTables | None = None  # the query's compression, while `picture` is as stored
    exclude: int | None = None  # an item that is the picture itself (a new upload's own)
    # The picture as decoded, when `picture` is it made smaller: objects are verified on
    # their own pixels there (a product photo in a desktop screenshot keeps its detail)
    detailed: PILImage.Image | None = None

    def neighbours(self, vector: np.ndarray, count: int) -> list[tuple[int, float]]:
        return neighbours(self.index, vector, count, self.exclude)

    def found(self, label: int, cosine: float, region: Box | None) -> None:
        if label == self.exclude:
            return
        candidate = self.candidates.setdefault(label, Candidate())
        if region is not None and region in self.objects:
            if cosine > candidate.object_cosine:
                candidate.object, candidate.object_cosine = region, cosine
            if self.several_objects:
                return  # one of several: its nearness does not rank look-alikes
        if cosine > candidate.cosine:
            candidate.cosine, candidate.region = cosine, region

    @property
    def several_objects(self) -> bool:
        return len(self.objects) >= 2


def neighbours(
    index: SearchIndex, vector: np.ndarray, count: int, exclude: int | None
) -> list[tuple[int, float]]:
    """The copy index's `count` nearest items to a vector, leaving out `exclude`."""
    found = index.query(vector, count + (exclude is not None))
    return [(label, cosine) for label, cosine in found if label != exclude][:count]


# (detector, on the query's mirror image), cheapest first; the checks stop at a copy.
_PASSES = ((Detector.ORB, False), (Detector.SIFT, False), (Detector.ORB, True), (Detector.SIFT, True))


class Verifier:
    """Local-feature checks of a query's best candidates not checked yet (hash matches first),
    cheapest first: ORB, then SIFT only when ORB verified no copy; the query's mirror image
    by ORB, and by SIFT only when nothing matched as it is (ORB finds a symmetric item's
    mirror image consistent with itself at times). Each query's features are computed once."""

    def __init__(self, query: Query, params: RetrievalParams) -> None:
        self.query, self.params = query, params
        self.done: dict[int, Verification | None] = {}
        self._features: dict[tuple[Detector, bool], Features] = {}
        self._object_features: dict[tuple[Detector, Box], Features] = {}
        self._matched_as_is = False
        self._rgb: np.ndarray | None = None

    def _hash_matched(self, c: Candidate) -> bool:
        t = self.params.copies
        close = c.hash_distance is not None and c.hash_distance <= t.loose_hash_distance
        return close or distinct_nearest_hash(c.hash_distance, c.hash_gap, t)

    def _query_features(self, detector: Detector, mirrored: bool) -> Features:
        key = (detector, mirrored)
        if key not in self._features:
            picture = self.query.picture
            if not mirrored:
                self._features[key] = query_features(picture, detector)
            else:  # SIFT's from the picture's own (`verify.mirrored_sift`)
                own = self._query_features(detector, False) if detector is Detector.SIFT else None
                self._features[key] = mirrored_query_features(picture, detector, own)
        return self._features[key]

    def _copy_among(self, found: dict[int, Verification | None]) -> bool:
        candidates = self.query.candidates
        return any(
            verified_copy(v, candidates[la].copy_cosine, self.params.copies) for la, v in found.items()
        )

    def _settled(self, found: dict[int, Verification | None]) -> set[int | Box]:
        """With several objects: the candidates already verified as copies, and the objects
        a copy fills (its outline covers most of the object). Later, costlier passes skip
        them and the candidates found in those objects."""
        candidates, t = self.query.candidates, self.params.copies
        copies = {
            label: v
            for label, v in (self.done | found).items()
            if v is not None and verified_copy(v, candidates[label].copy_cosine, t)
        }
        filled = {o for o in self.query.objects for v in copies.values() if v.box.covers(o)}
        return set(copies) | filled

    def _sift_worth(self, among_best: bool, orb_inliers: int) -> bool:
        """SIFT for the best few, and for others where ORB saw part of the photo (where it saw
        nothing, SIFT rarely does either)."""
        return among_best or orb_inliers >= self.params.sift_orb_inliers

    def _ranked(self, count: int, also: Sequence[int]) -> list[int]:
        """Hash matches first, then by cosine; then `also`."""
        candidates = self.query.candidates
        ranked = sorted(
            (label for label in candidates if label not in self.done),
            key=lambda label: (not self._hash_matched(candidates[label]), -candidates[label].copy_cosine),
        )[: max(0, count)]
        return ranked + [label for label in also if label not in self.done and label not in ranked]

    def best(
        self, count: int, also: Sequence[int] = (), sift_top: int | None = None, every_copy: bool = False
    ) -> dict[int, Verification | None]:
        """The `count` best candidates not checked yet, and those of `also` (the nearest
        details) not among them; SIFT for the first `sift_top` (default: the parameter's).
        The next pass is skipped once one makes a copy, unless `every_copy` (several items)."""
        ranked = self._ranked(count, also)
        if not ranked:
            return {}
        files = dict(Image.objects.filter(pk__in=ranked).order_by().values_list("pk", "file"))
        names = {label: files[label] for label in ranked if label in files}
        found: dict[int, Verification | None] = dict.fromkeys(names)
        orb_inliers: dict[tuple[int, bool], int] = {}
        sift_always = set(ranked[: self.params.sift_top if sift_top is None else sift_top])
        for detector, mirrored in _PASSES:
            if mirrored and detector is Detector.SIFT and self._matched_as_is:
                break  # something matched as it is: the costly mirror pass is not needed
            settled = self._settled(found) if every_copy else set()
            for label, name in names.items():
                if detector is Detector.SIFT and not self._sift_worth(
                    label in sift_always, orb_inliers.get((label, mirrored), 0)
                ):
                    continue
                if label in settled or self.query.candidates[label].object in settled:
                    continue
                v = self._verify(label, name, detector, mirrored)
                if detector is Detector.ORB:
                    orb_inliers[label, mirrored] = v.inliers if v is not None else 0
                copy_cosine = self.query.candidates[label].copy_cosine
                if v is not None and _better(v, found[label], copy_cosine, self.params):
                    found[label] = v
            if self._copy_among(found) and not every_copy:
                break
        self.done |= found
        return found

    def _verify(
        self, label: int, name: str | None, detector: Detector, mirrored: bool
    ) -> Verification | None:
        """One candidate checked by one detector, on the query as it is or on its mirror."""
        item = _item_features(label, name, detector) if name else None
        if item is None:
            return None
        found_in = self.query.candidates[label].object
        if not mirrored and found_in is not None:
            v = self._verify_object(item, detector, found_in)
        else:
            query = self._query_features(detector, mirrored)
            v = verify(None, query, item) if mirrored else verify(query, None, item)
        if v is None:
            return None
        if not mirrored and v.inliers >= self.params.copies.inliers:
            self._matched_as_is = True
        t = self.params.copies
        if v.homography is None or v.inliers < min(t.inliers, t.coloured_inliers):
            return v
        colour = stored_colour(label, name) if name else None
        if colour is None:
            return v
        # Before any copy is taken: another colour of the same shot is not one.
        v.recolouring = recolouring(self._colours(), colour, v.homography, v.mirrored)
        if coloured_candidate(v, t) and not verified_copy(v, 1.0, t):
            v.colour_agreement = laid_colour_agreement(self._colours(), colour, v.homography, v.mirrored)
        return v

    def _verify_object(self, item: Features, detector: Detector, box: Box) -> Verification | None:
        """A candidate found by an object checked on that object alone, cut from the picture
        as decoded, at the query's full feature size: the other objects' features take none
        of its matches, and a small object keeps as many features as a whole picture (the six
        products of a listing page: ORB's inliers 16-61 on the whole page, 67-111 on each
        product's own part; the page's products labelled 0.36 -> 0.86 in bench/multi_item.py
        with the other changes for several objects). Its outline and homography in pixels of
        the whole picture."""
        picture = self.query.picture
        source = self.query.detailed or picture
        k = source.width / picture.width  # the object cut from the picture as decoded
        part = Box(round(box.x * k), round(box.y * k), round(box.w * k), round(box.h * k))
        key = (detector, box)
        if key not in self._object_features:
            self._object_features[key] = query_features(part.crop(source), detector)
        v = verify(self._object_features[key], None, item)
        if v is None:
            return None
        to_part = np.array([[k, 0.0, -part.x], [0.0, k, -part.y], [0.0, 0.0, 1.0]])
        return in_whole_picture(v, to_part, picture.size)

    def _colours(self) -> np.ndarray:
        """The query's RGB pixels (made once)."""
        if self._rgb is None:
            self._rgb = np.asarray(self.query.picture.convert("RGB"))
        return self._rgb


def _better(v: Verification, than: Verification | None, cosine: float, params: RetrievalParams) -> bool:
    """A verification that makes a copy beats one that does not; else more inliers win."""
    if than is None:
        return True
    makes, made = (verified_copy(x, cosine, params.copies) for x in (v, than))
    return makes > made or (makes == made and v.inliers > than.inliers)


@lru_cache(maxsize=2048)
def _item_features(label: int, file_name: str, detector: Detector) -> Features | None:
    """The local features of an item's stored photo: as kept when it was embedded
    (`services.item_features`), else computed from it (kept per process too: the same items
    come back for many queries)."""
    try:
        with default_storage.open(stored_name(file_name, detector)) as fh:
            kept = decode(fh.read(), detector, lambda: stored_photo(file_name))
    except OSError:  # not kept (stored before they were)
        kept = None
    if kept is not None:
        return kept
    photo = stored_photo(file_name)
    return item_features(photo, detector) if photo is not None else None


def match_pixels(query: Query, params: RetrievalParams) -> list[tuple[int, PixelMatch]]:
    """The best candidates' photos searched for the picture's pixels (`retrieval.pixels`): the
    candidate that holds them best as a close-up (of the `pixel_candidates` nearest, the
    vector's next neighbours included: a close-up's item is often far down), the one most
    like them as a whole photo at the picture's size (when it is smaller), and the one the
    picture shows unchanged in most places (under marks). A new candidate that matches joins
    the query's candidates. A picture with no detail of its own (a gradient) matches none."""
    pixels = QueryPixels(query.picture, query.jpeg)
    if not pixels.has_own_detail():
        return []
    candidates = query.candidates
    by_cosine = sorted(candidates, key=lambda label: -candidates[label].copy_cosine)
    nearest = dict(query.neighbours(query.vector, params.pixel_candidates))
    # Candidates of the whole picture first (its vector's, hash's and details' neighbours):
    # the checks compare the whole picture. Those found only by a region of it (the region
    # search adds up to 150) pushed a close-up's item, often 30th-100th, off the list: on 120
    # close-ups of the 5,750-photo gallery (33-60 % of each side, enlarged 2-4x by 4 filters,
    # JPEG 70-95; seeds other than bench/robust.py's) first 0.71 -> 0.80, with the tie rule
    # of `tiers.classify`; wrongly labelled 3 -> 1 (a near-identical photo of the same shirt).
    whole = [  # (cosine -1: found by an object of several alone)
        label for label in by_cosine if candidates[label].region is None and candidates[label].cosine > -1.0
    ]
    ranked = list(dict.fromkeys(whole + list(nearest)))[: params.pixel_candidates]
    ranked += [label for label in by_cosine if label not in ranked][: params.pixel_region_candidates]
    rows = Image.objects.filter(pk__in=ranked).values_list("pk", "file", "thumbnail", "width", "height")
    names = {pk: pixel_source(file, thumbnail, max(w, h)) for pk, file, thumbnail, w, h in rows}
    photos = {
        label: p
        for label in ranked
        if label in names and (p := _item_pixels(label, names[label])) is not None
    }
    # The screening at half resolution misses a detailed close-up at times: the whole
    # picture's nearest few are always searched fully.
    nearest_few = [label for label in nearest if label in photos][: params.pixel_nearest_checked]
    checked = list(dict.fromkeys(screened(pixels, photos, params.pixel_checked) + nearest_few))

    def colour_of(label: int) -> np.ndarray | None:
        return stored_colour(label, names[label])

    compared = [label for label in ranked[: params.overlaid_candidates] if label in photos]
    colours = {label: c for label in compared if (c := colour_of(label)) is not None}
    found = [
        m
        for m in (
            best_pixel_match(pixels, {label: photos[label] for label in checked}, colour_of),
            best_smaller_copy(pixels, photos, colour_of, params.pixel_checked),
            best_overlaid_copy(pixels, colours),
        )
        if m is not None
    ]
    for label, _ in found:
        if label not in candidates:
            candidates[label] = Candidate(cosine=nearest.get(label, -1.0))
    return found


def pixel_source(file: str, thumbnail: str, side: int) -> str:
    """The stored file the pixel checks read for an item: its thumbnail when the photo is
    larger and the thumbnail still twice their side: a query reads up to 280 of them, and a
    320-pixel thumbnail takes 0.8 ms, a 1200x1600 photo 2.9 even at a reduced scale."""
    small = min(side, settings.THUMBNAIL_SIZE)
    return thumbnail if thumbnail and small < side and small >= 2 * ITEM_PIXELS_SIDE else file


def _item_pixels(label: int, file_name: str) -> np.ndarray | None:
    """An item's photo for pixel matching, grey (at most 96 pixels a side)."""
    photo = _item_photo(label, file_name)
    return photo[0] if photo is not None else None


def stored_colour(label: int, file_name: str) -> np.ndarray | None:
    """An item's photo for pixel matching, in colour (at most 96 pixels a side)."""
    photo = _item_photo(label, file_name)
    return photo[1] if photo is not None else None


@lru_cache(maxsize=2048)
def _item_photo(label: int, file_name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """An item's photo for pixel matching, grey and in colour, from one decode (29 kB, kept
    per process: the same items come back for many queries)."""
    photo = stored_photo(file_name)
    return (item_pixels(photo), item_colour(photo)) if photo is not None else None


# The largest side the checks look at an item's photo at (ORB's; SIFT 240, pixels 96).
CHECKED_SIDE = max(d.item_side for d in Detector)


def stored_photo(file_name: str) -> PILImage.Image | None:
    """An item's stored photo on white, or None when it cannot be read. A JPEG is decoded at
    the smallest scale that keeps both sides at CHECKED_SIDE or more (a 12-megapixel one in
    9 ms instead of 60): a query may look at hundreds of candidates' photos."""
    try:
        with default_storage.open(file_name) as fh, PILImage.open(fh) as im:
            im.draft("RGB", (CHECKED_SIDE, CHECKED_SIDE))
            return flatten(im.convert("RGBA" if im.mode == "RGBA" else "RGB"))
    except (OSError, ValueError):
        return None
