"""Pixel matching of a close-up: is the query an enlarged part of a candidate's photo?

A zoom on a detail of a small catalogue photo (a 60x80 product photo: a 40 % close-up holds
24x32 of its pixels) has too few local features to verify, and its vector is far from the
whole photo's. Its pixels, though, are the photo's: the query in grey, shrunk to each of a
range of sizes relative to the photo, is slid over it (`cv2.matchTemplate`, normalised
correlation, so brightness and contrast changes do not matter). The same photo's part
correlates at 0.95-1.0 whatever the zoom; other photos rarely above 0.98, and a candidate
must also beat every other one clearly (`CopyThresholds.pixel_*`). Translation and scale
only: turned or mirrored close-ups are left to local features.

Measured on 150 random close-ups (30-75 % of each side, enlarged 2-6x, blurred or not, JPEG
50-90) of the 6,000 product photos, their item among the copy index's 30 nearest for 76 %:
recall@1 0.39 by the vector, 0.68 with this check (`CopyThresholds` 0.98, lead 0.02); of 150
CIFAR-10 pictures none was taken for an item, of 150 close-ups of items not among the
candidates and 120 edited copies of other kinds one each. About 20 ms for 30 candidates.

More candidates find more close-ups (a strong close-up's item is often 30th-100th by its
vector), so the 100 nearest are screened at half the resolution first (`screened`) and the 10
best get the full sweep: on 150 other random close-ups (33-50 % of each side, enlarged 2-4x,
JPEG 60-90) of 2,000 photos, labelled right 0.59 -> 0.70 for 1.3x the time, with none wrong
and none of 100 held-back products' close-ups or 100 CIFAR-10 pictures taken. Colour variants
of one shot (a catalogue's shirt in five colours) are alike in grey, so the best three are then
compared in colour and the lead is theirs: 0.70 -> 0.73 on those close-ups, still none wrong.

A copy under marks (a banner, a sticker, a caption) keeps the photo's frame: the query shrunk
to the photo's size shows most of the photo's detailed pixels unchanged
(`QueryPixels.overlaid_copy`). On 200 random overlays of 2,000 photos (banners 10-30 % of the
height, stickers, text, or all three, enlarged 2-5x, JPEG 70-95), with the same marks on 150
held-back products and 150 CIFAR-10 pictures as outside photos: labelled right 0.895 (their
item among the candidates 0.955), none wrong, no outside photo (`CopyThresholds.overlaid_*`:
0.6 of the detailed pixels within 24 levels, lead 0.2). Counting flat pixels too let two
pictures of one flat colour agree.

A smaller copy of the whole photo (a thumbnail re-saved at a low JPEG quality) is compared at
its own size instead (`QueryPixels.smaller_copy`: the photo shrunk to it), as enlarging it
would blur it away from the sharp photo. Measured on 200 random thumbnails (20-60 % of each
side, four resampling filters, JPEG 15-60) of 2,000 product photos, with 150 thumbnails of
held-back products and 200 CIFAR-10 pictures as outside photos: labelled by the close-up
sweep 0.065, by this comparison 0.52 (0.79 of those whose item was among the candidates), no
outside photo and no wrong item taken (`CopyThresholds.smaller_*`: 0.97, lead 0.03).

A tiny thumbnail's item is often not among the 30 nearest by its vector, so the smaller-copy
check screens the same 100 candidates as close-ups (by the photo only shrunk), and compares the
best 10 with the photo shrunk by each usual filter and saved with the query's own JPEG tables
(`imaging.JpegTables`): its 8x8-block artefacts then match (correlation 0.998-1.0 instead of
0.96-0.99). On 80 thumbnails through the whole search (20-60 % of each side, six filters from
PIL and OpenCV, JPEG 15-60): labelled right 0.66 (30 candidates) -> 0.68 (compressed alike)
-> 0.74 (100 candidates) -> 0.75 (both), none wrong; of 80 held-back products' thumbnails one
labelled (by its hash, as before), of 60 CIFAR-10 thumbnails none."""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

import cv2
import numpy as np
from PIL import Image

from ..imaging import JpegTables
from .plain import detail_agreement, has_own_detail, one_way
from .regions import Box

ITEM_SIDE = 96  # the catalogue photo's longer side for the search (small photos kept as they are)
QUERY_SIDE = 128  # the query is shrunk to this first: templates are at most ITEM_SIDE
MIN_SIDE = 8  # templates smaller than this say nothing
MIN_CONTRAST = 4.0  # grey levels (standard deviation): a flat template matches anywhere
# The query's longer side as a share of the photo's: a coarse geometric sweep, then a finer
# one around the best share for the best few candidates.
COARSE_SHARES = tuple(float(s) for s in np.geomspace(0.25, 1.0, 12))
FINE_STEPS = tuple(float(s) for s in np.geomspace(0.9, 1.1, 7))
REFINED = 3  # candidates whose best share is refined
# Many candidates are first screened at half the resolution with a shorter sweep; the best
# `checked` of them get the full one.
SCREEN_SHARES = tuple(float(s) for s in np.geomspace(0.3, 1.0, 8))
SCREEN_MIN_SIDE = 5
SHRINK_FILTERS = (
    Image.Resampling.BOX,
    Image.Resampling.BILINEAR,
    Image.Resampling.BICUBIC,
    Image.Resampling.LANCZOS,
)  # how software commonly makes a smaller copy
SAME_SHAPE = 0.08  # a smaller copy's aspect ratio is the photo's within this share
# An overlaid copy: the query at the photo's size; a pixel agrees when no channel is further
# apart than this, counted where the photo has detail (its grey levels change by this much
# within 3x3 pixels: flat backgrounds, white or coloured, agree with anything flat).
AGREE_LEVELS = 24
DETAIL_LEVELS = 20
_SQUARE = np.ones((3, 3), np.uint8)

_T = TypeVar("_T")


class PixelCheck(StrEnum):
    CLOSE_UP = "close_up"  # the query is part of the photo, enlarged
    SMALLER = "smaller"  # the query is the whole photo, smaller (compared at the query's size)
    OVERLAID = "overlaid"  # the query is the whole photo with marks over part of it
    CONTENT = "content"  # the query's content is the photo's, at another size (`retrieval.content`)


@dataclass(frozen=True)
class PixelMatch:
    correlation: float  # the check's agreement of the query's pixels and the photo's
    share: float  # the query's longer side as a share of the photo's
    gap: float = 0.0  # agreement above the best other candidate's
    check: PixelCheck = PixelCheck.CLOSE_UP
    detail: float = 1.0  # a close-up's `QueryPixels.detail_agreement`
    one_way: float = 0.0  # a close-up's `QueryPixels.one_way`
    box: Box | None = None  # where the photo's content is in the query (a content match)
    inner_detail: float = 1.0  # a content match's detail inside the item's outline


def item_pixels(image: Image.Image) -> np.ndarray:
    """A catalogue photo as the matcher sees it: grey, at most ITEM_SIDE (uint8: kept per process)."""
    grey = image.convert("L")
    if max(grey.size) > ITEM_SIDE:
        grey.thumbnail((ITEM_SIDE, ITEM_SIDE), Image.Resampling.BOX)
    return np.asarray(grey, dtype=np.uint8)


def item_colour(image: Image.Image) -> np.ndarray:
    """A catalogue photo in colour at the size of `item_pixels` (for the best few only)."""
    colour = image.convert("RGB")
    if max(colour.size) > ITEM_SIDE:
        colour.thumbnail((ITEM_SIDE, ITEM_SIDE), Image.Resampling.BOX)
    return np.asarray(colour, dtype=np.uint8)


class QueryPixels:
    """A query's grey pixels, with its templates made once per size (catalogue photos often
    share theirs)."""

    def __init__(self, picture: Image.Image, jpeg: JpegTables | None = None) -> None:
        colour = picture.convert("RGB")
        self.full = np.asarray(colour, dtype=np.uint8)  # as the query came (overlaid copies)
        # How the query was compressed, while its pixels here are the stored ones: a smaller
        # copy is compared with the photo compressed alike (a thumbnail at JPEG quality 30 has
        # a few 8x8 blocks; its artefacts, not its content, set it apart from the sharp photo).
        self.jpeg = jpeg if max(colour.size) <= QUERY_SIDE else None
        if max(colour.size) > QUERY_SIDE:
            colour.thumbnail((QUERY_SIDE, QUERY_SIDE), Image.Resampling.BOX)
        self.colour = np.asarray(colour, dtype=np.uint8)
        self.pixels = np.asarray(colour.convert("L"), dtype=np.uint8)
        self._templates: dict[tuple[int, int], np.ndarray | None] = {}
        self._full_sizes: dict[tuple[int, int], np.ndarray] = {}
        self._halved: QueryPixels | None = None

    def has_own_detail(self) -> bool:
        """Whether the picture has detail beyond a smooth surface (`plain.has_own_detail`)."""
        return has_own_detail(self.pixels)

    def _template(self, w: int, h: int) -> np.ndarray | None:
        if (w, h) not in self._templates:
            t = cv2.resize(self.pixels, (w, h), interpolation=cv2.INTER_AREA)
            self._templates[w, h] = t if float(t.std()) >= MIN_CONTRAST else None
        return self._templates[w, h]

    def smaller_copy(self, item: np.ndarray, as_made: bool = True) -> float | None:
        """The correlation of the query with the whole photo shrunk to the query's size, when
        the query is a smaller picture of the same shape; otherwise None. `as_made`: the photo
        also compressed as the query was (`_like_query`), else only shrunk (for screening)."""
        qh, qw = self.pixels.shape
        ih, iw = item.shape
        if qw * qh >= iw * ih or min(qw, qh) < MIN_SIDE:
            return None
        if abs((qw / qh) / (iw / ih) - 1.0) > SAME_SHAPE or float(self.pixels.std()) < MIN_CONTRAST:
            return None
        photos = (
            self._like_query(item) if as_made else [cv2.resize(item, (qw, qh), interpolation=cv2.INTER_AREA)]
        )
        return max(
            float(cv2.matchTemplate(photo, self.pixels, cv2.TM_CCOEFF_NORMED).max()) for photo in photos
        )

    def _like_query(self, item: np.ndarray) -> list[np.ndarray]:
        """A photo shrunk to the query's size, as the query may have been made: compressed as
        the query was (when known), after each of the usual resampling filters (their blur
        differs by more than the few levels that tell a copy from a look-alike)."""
        qh, qw = self.pixels.shape
        if self.jpeg is None:
            return [cv2.resize(item, (qw, qh), interpolation=cv2.INTER_AREA)]
        photo = Image.fromarray(item)
        return [
            compressed_like(np.asarray(photo.resize((qw, qh), f), dtype=np.uint8), self.jpeg)
            for f in SHRINK_FILTERS
        ]

    def colour_match(self, item: np.ndarray, share: float, whole: bool = False) -> float:
        """The best correlation of the query in colour, at one share, anywhere in the item's
        colour photo (`item_colour`): tells apart colour variants of one shot, alike in grey.
        `whole`: the photo shrunk to the query's size instead (`smaller_copy`)."""
        if whole:
            return max(
                float(cv2.matchTemplate(photo, self.colour, cv2.TM_CCOEFF_NORMED).max())
                for photo in self._like_query(item)
            )
        template = cv2.resize(self.colour, self._size_within(item, share), interpolation=cv2.INTER_AREA)
        return float(cv2.matchTemplate(item, template, cv2.TM_CCOEFF_NORMED).max())

    def overlaid_copy(self, item_colour: np.ndarray) -> float | None:
        """The share of the photo's detailed pixels (edges and texture, not flat background)
        that the query, at the photo's size, shows unchanged: most of them for the photo under
        a banner, a sticker or text; None when the query is of another shape."""
        ih, iw = item_colour.shape[:2]
        qh, qw = self.full.shape[:2]
        if abs((qw / qh) / (iw / ih) - 1.0) > SAME_SHAPE:
            return None
        shown = detailed(item_colour).view(np.uint8)
        count = cv2.countNonZero(shown)
        if count < 0.1 * shown.size:
            return None
        # The largest of the channels' differences, by OpenCV: NumPy's max over the channel
        # axis took 0.23 ms of the 0.27 a photo (250 photos a query).
        apart = cv2.split(cv2.absdiff(self._full_at(iw, ih), item_colour))
        agree = (cv2.max(cv2.max(apart[0], apart[1]), apart[2]) <= AGREE_LEVELS).view(np.uint8)
        return cv2.countNonZero(cv2.bitwise_and(agree, shown)) / count

    def _full_at(self, w: int, h: int) -> np.ndarray:
        """The query as it came, at a photo's size (made once per size: catalogue photos
        often share theirs)."""
        if (w, h) not in self._full_sizes:
            self._full_sizes[w, h] = cv2.resize(self.full, (w, h), interpolation=cv2.INTER_AREA)
        return self._full_sizes[w, h]

    def halved(self) -> QueryPixels:
        """The query at half the resolution (for screening many candidates)."""
        if self._halved is None:
            self._halved = QueryPixels(Image.fromarray(halve(self.pixels)))
        return self._halved

    def detail_agreement(self, item: np.ndarray, share: float) -> float:
        """`plain.detail_agreement` of the query, at `share` of the photo's longer side, with
        the part of the photo it matches best."""
        template = self._template_at(item, share)
        h, w = template.shape
        _, _, _, (x, y) = cv2.minMaxLoc(cv2.matchTemplate(item, template, cv2.TM_CCOEFF_NORMED))
        return detail_agreement(template, item[y : y + h, x : x + w])

    def one_way(self, item: np.ndarray, share: float) -> float:
        """`plain.one_way` of the query at `share` of the photo's longer side."""
        return one_way(self._template_at(item, share))

    def _template_at(self, item: np.ndarray, share: float) -> np.ndarray:
        """The query in grey at `share` of the photo's longer side (within the photo)."""
        size = self._size_within(item, share)
        template: np.ndarray = cv2.resize(self.pixels, size, interpolation=cv2.INTER_AREA)
        return template

    def _size_at(self, item: np.ndarray, share: float) -> tuple[int, int]:
        """The query's width and height when its longer side is `share` of the photo's."""
        ih, iw = item.shape[:2]
        qh, qw = self.pixels.shape
        f = share * max(iw, ih) / max(qw, qh)
        return round(qw * f), round(qh * f)

    def _size_within(self, item: np.ndarray, share: float) -> tuple[int, int]:
        """`_size_at`, at least a pixel and at most the photo's own size."""
        ih, iw = item.shape[:2]
        w, h = self._size_at(item, share)
        return min(iw, max(1, w)), min(ih, max(1, h))

    def match(
        self, item: np.ndarray, shares: tuple[float, ...] = COARSE_SHARES, min_side: int = MIN_SIDE
    ) -> PixelMatch | None:
        """The best correlation of the query, at each share of the item's longer side, anywhere
        in the item's photo."""
        ih, iw = item.shape
        best: PixelMatch | None = None
        for share in shares:
            w, h = self._size_at(item, share)
            if w > iw or h > ih or min(w, h) < min_side:
                continue
            template = self._template(w, h)
            if template is None:
                continue
            correlation = float(cv2.matchTemplate(item, template, cv2.TM_CCOEFF_NORMED).max())
            if best is None or correlation > best.correlation:
                best = PixelMatch(correlation, share)
        return best


def detailed(colour: np.ndarray) -> np.ndarray:
    """Where a photo has detail (edges, texture): its grey levels change by DETAIL_LEVELS
    within 3x3 pixels. Flat backgrounds, white or coloured, agree with anything flat."""
    grey = cv2.cvtColor(colour, cv2.COLOR_RGB2GRAY)
    mask: np.ndarray = cv2.morphologyEx(grey, cv2.MORPH_GRADIENT, _SQUARE) >= DETAIL_LEVELS
    return mask


def compressed_like(pixels: np.ndarray, jpeg: JpegTables) -> np.ndarray:
    """`pixels` (grey or RGB) saved and read back as a JPEG with `jpeg`'s tables: grey ones
    with the luminance table alone, which is how a JPEG's grey levels are compressed."""
    grey = pixels.ndim == 2
    if not grey and len(jpeg.tables) < 2:
        return pixels
    options: dict[str, object] = {"qtables": [list(t) for t in jpeg.tables[: 1 if grey else 2]]}
    if not grey and jpeg.subsampling >= 0:
        options["subsampling"] = jpeg.subsampling
    buffer = io.BytesIO()
    try:
        Image.fromarray(pixels).save(buffer, "JPEG", **options)
        buffer.seek(0)
        with Image.open(buffer) as read:
            return np.asarray(read.convert("L" if grey else "RGB"), dtype=np.uint8)
    except (OSError, ValueError):  # tables a JPEG may carry but PIL will not write: compare as is
        return pixels


def halve(pixels: np.ndarray) -> np.ndarray:
    h, w = pixels.shape
    return cv2.resize(pixels, (max(1, w // 2), max(1, h // 2)), interpolation=cv2.INTER_AREA)


def screened(query: QueryPixels, items: Mapping[int, np.ndarray], keep: int) -> list[int]:
    """The `keep` candidates whose photos, at half the resolution, hold the query's pixels best
    (a tenth of the full sweep's cost each)."""
    small = query.halved()
    scores = {}
    for label, pixels in items.items():
        m = small.match(halve(pixels), SCREEN_SHARES, SCREEN_MIN_SIDE)
        if m is not None:
            scores[label] = m.correlation
    return sorted(scores, key=lambda la: -scores[la])[:keep]


def best_pixel_match(
    query: QueryPixels,
    items: Mapping[int, np.ndarray],
    colour_of: Callable[[int], np.ndarray | None] | None = None,
) -> tuple[int, PixelMatch] | None:
    """The candidate whose photo holds the query's pixels best, with its lead over the others.
    With `colour_of` (a candidate's `item_colour`), the best few in grey are told apart in
    colour: the lead is then their colours' (colour variants of one shot are alike in grey)."""
    found = {label: m for label, pixels in items.items() if (m := query.match(pixels)) is not None}
    for label in _best(found, lambda m: m.correlation):
        coarse = found[label]
        fine = query.match(items[label], tuple(coarse.share * step for step in FINE_STEPS))
        if fine is not None and fine.correlation > coarse.correlation:
            found[label] = fine
    if not found:
        return None
    colours = _colour_scores(query, _best(found, lambda m: m.correlation), found, colour_of)
    label, gap = _leader({la: m.correlation for la, m in found.items()}, colours)
    best = found[label]
    photo = items[label]
    return label, PixelMatch(
        best.correlation,
        best.share,
        gap,
        detail=query.detail_agreement(photo, best.share),
        one_way=query.one_way(photo, best.share),
    )


def _best(found: Mapping[int, _T], score: Callable[[_T], float]) -> list[int]:
    """The REFINED best labels by `score`."""
    return sorted(found, key=lambda la: -score(found[la]))[:REFINED]


def _leader(scores: Mapping[int, float], colours: Mapping[int, float]) -> tuple[int, float]:
    """The best candidate and its lead over the next: by their colour scores when the best few
    have them (colour variants of one shot are alike in grey), else by `scores`."""
    ranking = colours if len(colours) > 1 else scores
    ranked = sorted(ranking, key=lambda la: -ranking[la])
    runner_up = ranking[ranked[1]] if len(ranked) > 1 else -1.0
    return ranked[0], ranking[ranked[0]] - runner_up


def _colour_scores(
    query: QueryPixels,
    labels: list[int],
    found: Mapping[int, PixelMatch] | None,
    colour_of: Callable[[int], np.ndarray | None] | None,
) -> dict[int, float]:
    """The query's colour correlation with each candidate's photo: at its best share (a
    close-up), or at the query's size when `found` is None (a smaller copy)."""
    scores: dict[int, float] = {}
    if colour_of is None:
        return scores
    for label in labels:
        colour = colour_of(label)
        if colour is not None:
            share = found[label].share if found is not None else 1.0
            scores[label] = query.colour_match(colour, share, whole=found is None)
    return scores


def best_smaller_copy(
    query: QueryPixels,
    items: Mapping[int, np.ndarray],
    colour_of: Callable[[int], np.ndarray | None] | None = None,
    keep: int = 10,
) -> tuple[int, PixelMatch] | None:
    """The candidate whose whole photo, at the query's size, is most like the query, with its
    lead over the others (`QueryPixels.smaller_copy`; the `keep` best by the photos only shrunk,
    when more); with `colour_of`, the best few are told apart in colour, as in
    `best_pixel_match`."""
    if len(items) > keep:
        shrunk = {
            la: c for la, pixels in items.items() if (c := query.smaller_copy(pixels, False)) is not None
        }
        items = {la: items[la] for la in sorted(shrunk, key=lambda la: -shrunk[la])[:keep]}
    found = {label: c for label, pixels in items.items() if (c := query.smaller_copy(pixels)) is not None}
    if not found:
        return None
    colours = _colour_scores(query, _best(found, float), None, colour_of)
    label, gap = _leader(found, colours)
    return label, PixelMatch(found[label], 1.0, gap, PixelCheck.SMALLER)


def best_overlaid_copy(
    query: QueryPixels, colours: Mapping[int, np.ndarray]
) -> tuple[int, PixelMatch] | None:
    """The candidate whose photo the query shows unchanged in most places, with its lead over
    the others (`QueryPixels.overlaid_copy`)."""
    found = {label: a for label, colour in colours.items() if (a := query.overlaid_copy(colour)) is not None}
    if not found:
        return None
    label, gap = _leader(found, {})
    return label, PixelMatch(found[label], 1.0, gap, PixelCheck.OVERLAID)
