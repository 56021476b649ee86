"""The first stages of search by image (`search_by_image`): a picture's candidates from its
copy-model vector, its PDQ hashes (with mirrors and turns, by radius and the nearest at any
distance) and the index of the catalogue photos' details, before any check. A new upload's
note of the item it copies (`search_by_image.upload_copy_of`) gathers them the same way,
leaving out the upload itself."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image as PILImage

from ..embedders import detail_model, get_embedder
from ..imaging import JpegTables
from ..retrieval.hashes import HASH_BITS, HashMatch, pdq_dihedral
from ..retrieval.params import RetrievalParams
from .search import SearchIndex, index_reader
from .search_checks import Candidate, Query, neighbours
from .search_slots import beside


def gather_candidates(
    index: SearchIndex,
    picture: PILImage.Image,
    vector_of: Callable[[], np.ndarray],
    params: RetrievalParams,
    lap: Callable[[str], None],
    *,
    jpeg: JpegTables | None = None,
    exclude: int | None = None,
    details: bool = True,
) -> tuple[Query, bool, list[int]]:
    """(the query with its candidates, whether a copy is sure by its hash already, the items
    of the nearest details to check with the first candidates). `vector_of` gives the
    picture's copy-model vector (computed while a helper thread hashes the picture);
    `exclude` is an item that is the picture itself; `lap` marks the stages' ends."""
    # The picture's hashes and their lookups in a helper thread (15 ms at a million items),
    # beside its vector and the index's nearest (pgvector's: a round trip to the database).
    hashed = beside(_hash_lookups, index, picture.copy(), params, exclude)
    vector = vector_of()
    lap("embed")
    nearest = neighbours(index, vector, params.candidates, exclude)
    hashes, by_hash, nearest_hashes = hashed.result()
    query = Query(picture, index, vector, hashes, jpeg=jpeg, exclude=exclude)
    for label, cosine in nearest:
        query.found(label, cosine, None)
    for match in by_hash:
        candidate = query.candidates.setdefault(match.label, Candidate())
        candidate.hash_distance, candidate.hash_variant = match.distance, match.variant
        if candidate.cosine < 0:
            stored = index.vector(match.label)
            candidate.cosine = float(stored @ query.vector) if stored is not None else 0.0
    sure = sure_by_hash(query, params)
    if not sure:  # a copy sure by its hash needs no nearest hash at any distance (a full scan)
        _nearest_hash(query, nearest_hashes, params)
    nearest_details = _search_details(query, params) if details else []
    lap("search")
    return query, sure, nearest_details


def _hash_lookups(
    index: SearchIndex, picture: PILImage.Image, params: RetrievalParams, exclude: int | None
) -> tuple[np.ndarray, list[HashMatch], list[HashMatch] | None]:
    """The picture's PDQ hashes (mirrors and turns), the items within the loose radius of
    any, and the two nearest to it as it is at any distance (an exact scan, about 16 ms at a
    million items): None when a match is already near enough to make a copy sure (`sure_by_hash`
    then needs it only if that match's vector disagrees: `_nearest_hash` scans then)."""
    hashes = pdq_dihedral(picture)[0]
    lookup = index.hash_index()
    matches = [m for m in lookup.within(hashes, params.copies.loose_hash_distance) if m.label != exclude]
    if any(m.distance <= params.sure_hash_distance for m in matches):
        return hashes, matches, None
    return hashes, matches, _nearest_two(index, hashes[0], exclude)


def _nearest_two(index: SearchIndex, code: np.ndarray, exclude: int | None) -> list[HashMatch]:
    found = index.hash_index().nearest(code, 2 if exclude is None else 3)
    return [m for m in found if m.label != exclude][:2]


def _nearest_hash(query: Query, nearest: list[HashMatch] | None, params: RetrievalParams) -> None:
    """The item whose hash is nearest to the picture's, at any distance, with how much nearer
    it is than the next one: a copy too changed for the radius lookup (a tiny thumbnail, a
    sticker over the photo) is still far nearer than everything else. Not called when a copy
    is already sure by its hash (the radius lookup has then found every hash as near as the
    copy's); `nearest` is the helper thread's scan, or None when it skipped it."""
    if nearest is None:
        nearest = _nearest_two(query.index, query.hashes[0], query.exclude)
    if not nearest or nearest[0].distance > params.copies.nearest_hash_distance:
        return
    first = nearest[0]
    gap = nearest[1].distance - first.distance if len(nearest) > 1 else HASH_BITS
    candidate = query.candidates.setdefault(first.label, Candidate())
    if candidate.hash_distance is None or first.distance < candidate.hash_distance:
        candidate.hash_distance, candidate.hash_variant = first.distance, 0
    candidate.hash_gap = gap
    if candidate.cosine < 0:
        stored = query.index.vector(first.label)
        candidate.cosine = float(stored @ query.vector) if stored is not None else 0.0


def _search_details(query: Query, params: RetrievalParams) -> list[int]:
    """Items whose details are nearest to the picture (`registry.detail_model`), best first;
    their detail cosine is kept as evidence, their ranking among look-alikes is unchanged."""
    ref = detail_model()
    if ref is None:
        return []
    index = index_reader(ref).get()
    if index is None or len(index) == 0:
        return []
    embedder = get_embedder(ref)
    view = embedder.view_of(query.vector)[0]  # type: ignore[attr-defined]
    found = index.query(view, params.detail_candidates)
    kept = []
    for label, cosine in found:
        if label == query.exclude:
            continue
        candidate = query.candidates.get(label)
        if candidate is None or candidate.cosine < 0:
            stored = query.index.vector(label)
            if stored is None:
                continue  # not in the copy index (yet, or any more): not searchable here
            candidate = query.candidates.setdefault(label, Candidate())
            candidate.cosine = float(stored @ query.vector)
        candidate.detail_cosine = max(candidate.detail_cosine, cosine)
        kept.append(label)
    return kept[: params.detail_verified]


def sure_by_hash(query: Query, params: RetrievalParams) -> bool:
    """A copy found by its hash, close enough and confirmed by its vector: no need to look
    for it in parts of the picture."""
    return any(
        c.hash_distance is not None
        and c.hash_distance <= params.sure_hash_distance
        and c.cosine >= params.sure_cosine
        for c in query.candidates.values()
    )
