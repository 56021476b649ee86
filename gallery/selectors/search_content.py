"""A photo fitted into a larger canvas (a shop's page, a poster), found by its content before
any verification (`retrieval.content`): the stage of search by image (`search_by_image`)
between gathering candidates and verifying them."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
from PIL import Image as PILImage

from ..models import Image
from ..retrieval import regions as region_tools
from ..retrieval.content import (
    ContentAgreement,
    ContentPart,
    PictureContent,
    content_agreement,
    photo_content,
)
from ..retrieval.params import RetrievalParams
from ..retrieval.pixels import PixelCheck, PixelMatch
from ..retrieval.regions import Box
from ..retrieval.tiers import pixel_copy
from .search_checks import Query, pixel_source, stored_colour


def content_copy(
    query: Query, params: RetrievalParams, embed: Callable[[list[PILImage.Image]], np.ndarray]
) -> tuple[int, PixelMatch, float] | None:
    """The candidate whose photo's content the picture's content is (`retrieval.content`),
    clearly more than any other's (`tiers.pixel_copy`), with its cosine; None when the
    picture has no plain margins or none is. Compared: the whole picture's best candidates,
    then, unless one of those agrees closely (`_settled`), those of its content framed as a
    catalogue photo (a tenth of margin; 150 photos fitted into 1024x768: their own first by
    the whole picture 0.73 of the time, by the framed content 0.88). Its box: where the
    content is in the picture; its share: how much of the picture the content fills, over
    how much of its photo it fills."""
    box = region_tools.content_box(query.picture)
    if box is None:
        return None
    content = PictureContent(np.asarray(box.crop(query.picture).convert("RGB"), dtype=np.float32))
    candidates = query.candidates
    best_first = sorted(candidates, key=lambda label: -candidates[label].copy_cosine)
    scores = _content_scores(content, best_first[: params.content_checked])
    found = _content_leader(scores, box, query.picture, params)
    near: dict[int, float] = {}
    if found is None and not _settled(scores, params):  # its framed content's candidates
        framed = region_tools.with_margins(query.picture, box, 0.1)
        near = dict(query.neighbours(embed([framed])[0], params.content_checked))
        scores |= _content_scores(content, [label for label in near if label not in scores])
        found = _content_leader(scores, box, query.picture, params)
    if found is None:
        return None
    label, match = found
    return label, match, max(near.get(label, -1.0), candidates[label].cosine if label in candidates else -1.0)


def object_content_copies(query: Query, params: RetrievalParams) -> list[tuple[int, PixelMatch]]:
    """Of several objects on a plain background (a shop's listing page, a collage, a product
    photo in a screenshot: `Query.objects`), each whose content is the content of the photo
    of one of the candidates its own search found, clearly more than of the others' photos
    (`content_copy` for the object alone): a copy there even where local features are too
    few to verify (a plain product, small on the page). Its box: the object's content."""
    copies = []
    for found in query.objects:
        labels = [label for label, c in query.candidates.items() if c.object == found]
        labels.sort(key=lambda label: -query.candidates[label].object_cosine)
        matches = []
        for box in _object_contents(query.picture, found):
            content = PictureContent(np.asarray(box.crop(query.picture).convert("RGB"), dtype=np.float32))
            scores = _content_scores(content, labels[: params.content_checked])
            if (copy := _content_leader(scores, box, query.picture, params)) is not None:
                matches.append(copy)
        if matches:
            copies.append(max(matches, key=lambda copy: copy[1].correlation))
    return copies


def _object_contents(picture: PILImage.Image, found: Box) -> list[Box]:
    """The object's content, cut again from its neighbourhood at its own size (object boxes
    are found on the picture at 256 pixels a side, and joined to their near parts), and its
    main band of rows, without a caption under it (`regions.main_band`)."""
    grow = max(4, round(0.05 * max(found.w, found.h)))
    around = Box(found.x - grow, found.y - grow, found.w + 2 * grow, found.h + 2 * grow).clipped(picture)
    if around is None:
        return [found]
    near = around.crop(picture)
    cuts = [region_tools.content_box(near, min_share=0.0, max_share=1.0), region_tools.main_band(near)]
    boxes = [cut.within(around) for cut in cuts if cut is not None]
    return boxes or [found]


def _settled(scores: dict[int, ContentAgreement], params: RetrievalParams) -> bool:
    """A candidate's content agrees closely with the picture's (but not as a copy's): the
    picture's item, or a shade of its shot, is among the candidates, and more candidates
    would not make a copy of it (600 photos fitted into 1024x768: no answer changed; ~20 ms
    saved for each that stopped here)."""
    return any(a.colour >= params.content_settled for a in scores.values())


def _content_leader(
    scores: dict[int, ContentAgreement], box: Box, picture: PILImage.Image, params: RetrievalParams
) -> tuple[int, PixelMatch] | None:
    """The best of `scores` in colour with its lead over the next, when that makes a copy
    (`tiers.pixel_copy`)."""
    if not scores:
        return None
    best = max(scores, key=lambda label: scores[label].colour)
    agreement = scores[best]
    runner_up = max((a.colour for label, a in scores.items() if label != best), default=-1.0)
    # (its share: how much of the picture the content fills, over how much of the photo)
    share = box.area / float(picture.width * picture.height) / agreement.share
    match = PixelMatch(
        agreement.colour,
        share,
        agreement.colour - runner_up,
        PixelCheck.CONTENT,
        detail=agreement.detail,
        box=box,
        inner_detail=agreement.inner_detail,
    )
    return (best, match) if pixel_copy(match, params.copies) else None


def _content_scores(content: PictureContent, labels: list[int]) -> dict[int, ContentAgreement]:
    """`retrieval.content.content_agreement` of the picture's content with each item's
    photo's."""
    rows = Image.objects.filter(pk__in=labels).values_list("pk", "file", "thumbnail", "width", "height")
    scores = {}
    for pk, file, thumbnail, w, h in rows:
        parts = _photo_content(pk, pixel_source(file, thumbnail, max(w, h)))
        if parts is not None and (agreement := content_agreement(content, parts)) is not None:
            scores[pk] = agreement
    return scores


@lru_cache(maxsize=2048)
def _photo_content(label: int, file_name: str) -> tuple[ContentPart, ...] | None:
    """An item's photo's content (`retrieval.content.photo_content`), kept per process as
    `stored_colour` keeps its photo: the same items come back for many queries."""
    colour = stored_colour(label, file_name)
    return photo_content(colour) if colour is not None else None
