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
from ..retrieval.content import content_correlation, photo_content
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
    then those of its content framed as a catalogue photo (a tenth of margin; 150 photos
    fitted into 1024x768: their own first by the whole picture 0.73 of the time, by the
    framed content 0.88). Its box: where the content is in the picture; its share: how much
    of the picture the content fills, over how much of its photo it fills."""
    box = region_tools.content_box(query.picture)
    if box is None:
        return None
    content = np.asarray(box.crop(query.picture).convert("RGB"))
    candidates = query.candidates
    best_first = sorted(candidates, key=lambda label: -candidates[label].copy_cosine)
    scores = _content_scores(content, best_first[: params.content_checked])
    found = _content_leader(scores, box, query.picture, params)
    near: dict[int, float] = {}
    if found is None:  # not among the whole picture's candidates: its framed content's
        framed = region_tools.with_margins(query.picture, box, 0.1)
        near = dict(query.neighbours(embed([framed])[0], params.content_checked))
        scores |= _content_scores(content, [label for label in near if label not in scores])
        found = _content_leader(scores, box, query.picture, params)
    if found is None:
        return None
    label, match = found
    return label, match, max(near.get(label, -1.0), candidates[label].cosine if label in candidates else -1.0)


def _content_leader(
    scores: dict[int, tuple[float, float]], box: Box, picture: PILImage.Image, params: RetrievalParams
) -> tuple[int, PixelMatch] | None:
    """The best of `scores` (the correlation, and the share of its photo its content covers)
    with its lead over the next, when that makes a copy (`tiers.pixel_copy`)."""
    if not scores:
        return None
    best = max(scores, key=lambda label: scores[label][0])
    correlation, photo_share = scores[best]
    runner_up = max((c for label, (c, _) in scores.items() if label != best), default=-1.0)
    # (its share: how much of the picture the content fills, over how much of the photo)
    share = box.area / float(picture.width * picture.height) / photo_share
    match = PixelMatch(correlation, share, correlation - runner_up, PixelCheck.CONTENT, box=box)
    return (best, match) if pixel_copy(match, params.copies) else None


def _content_scores(content: np.ndarray, labels: list[int]) -> dict[int, tuple[float, float]]:
    """`retrieval.content.content_correlation` of the picture's content with each item's
    photo's, and the share of its photo that content covers."""
    rows = Image.objects.filter(pk__in=labels).values_list("pk", "file", "thumbnail", "width", "height")
    scores = {}
    for pk, file, thumbnail, w, h in rows:
        found = _photo_content(pk, pixel_source(file, thumbnail, max(w, h)))
        if found is not None and (correlation := content_correlation(content, found[0])) is not None:
            scores[pk] = (correlation, found[1])
    return scores


@lru_cache(maxsize=2048)
def _photo_content(label: int, file_name: str) -> tuple[np.ndarray, float] | None:
    """An item's photo's content (`retrieval.content.photo_content`), kept per process as
    `stored_colour` keeps its photo: the same items come back for many queries."""
    colour = stored_colour(label, file_name)
    return photo_content(colour) if colour is not None else None
