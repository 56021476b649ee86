"""Search by image: a query goes through the retrieval pipeline (`gallery/retrieval/`):
1. decode (JPEG drafted to about `query_side`), the visitor's box if any;
2. the copy model's vector of the whole picture, searched in the copy index and in the index
   of the catalogue photos' details (a close-up of part of an item), and the picture's PDQ
   hashes (with mirrors and turns), looked up by Hamming distance;
3. unless a copy is already sure by its hash, or by its content's pixels (a photo fitted into
   a larger canvas: `retrieval.content`): local-feature verification of the best
   candidates, then of the whole picture's next ones; unless one is a copy no other verified
   item rivals, the picture's regions (content box, multi-scale grid), each embedded and
   searched, and the next candidates verified. Several objects on a plain background (a
   listing page, a collage) are searched whatever was found: each is a region, its
   candidates verified on it alone or found by its content (`object_content_copies`), and
   every copy among them is kept;
4. still no copy: the picture's pixels looked for in the best candidates' photos (a close-up
   of a detail, a smaller copy of the whole photo, or the photo under marks: `retrieval.pixels`);
5. every candidate classified `exact` / `near_duplicate` / `similar` (`retrieval.tiers`; a
   copy by local features that another item matches nearly as well is a look-alike);
   copies first, then look-alikes by the active model's similarity.
A new upload is checked for the item it copies by the same stages (`upload_copy_of`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from django.conf import settings
from PIL import Image as PILImage

from ..embedders import ModelRef, active_model, copy_model, get_embedder
from ..imaging import JpegTables, decode_image, flatten, sha256_of
from ..models import Image
from ..retrieval import regions as region_tools
from ..retrieval.params import RetrievalParams, retrieval_params
from ..retrieval.pixels import PixelCheck, PixelMatch
from ..retrieval.recolouring import colour_thumbnail, colours_kept
from ..retrieval.regions import Box
from ..retrieval.tiers import (
    COPY_TIERS,
    Decision,
    Evidence,
    classify,
    contested,
    crop_needs_features,
    same_shape,
    unrivalled_copy,
    verified_copy,
)
from ..retrieval.verify import Verification
from .search import (
    RegionScore,
    SearchHit,
    SearchIndex,
    SearchResult,
    clamp_k,
    index_reader,
    search_vector,
)
from .search_candidates import gather_candidates
from .search_checks import Candidate, Query, Verifier, match_pixels, stored_colour
from .search_content import content_copy, object_content_copies
from .search_ranking import ranked_hits, suggested_regions
from .search_slots import search_slot


class _Stopwatch:
    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] = round(self.stages.get(stage, 0.0) + (now - self._last) * 1000, 2)
        self._last = now


def image_search_by_image(data: bytes, *, k: int = 20, category: str = "", box: str = "") -> SearchResult:
    """Raises `ImageRejected` for bad query files, exactly like an upload, and ValueError for
    a box that does not fit the picture (words a person understands). Runs in one of the
    process's search slots (`search_slots`); the wait is the `wait` stage."""
    started = time.perf_counter()
    watch = _Stopwatch()
    with search_slot():
        watch.lap("wait")
        return _search_by_image(data, k, category, box, started, watch)


def _search_by_image(
    data: bytes, k: int, category: str, box: str, started: float, watch: _Stopwatch
) -> SearchResult:
    params = retrieval_params()
    decoded = decode_image(
        data,
        max_bytes=settings.UPLOAD_MAX_BYTES,
        max_pixels=settings.UPLOAD_MAX_PIXELS,
        draft_size=None if box else params.query_side,  # a box may be a small part: full detail
    )
    picture = flatten(decoded.image)
    scale = decoded.width / picture.width  # pixels of the upload per pixel of the decoded picture
    offset = Box.whole(picture)
    if box:
        wanted = Box.parse(box, PILImage.new("1", (decoded.width, decoded.height)))
        offset = Box.parse(
            f"{wanted.x / scale},{wanted.y / scale},{wanted.w / scale},{wanted.h / scale}", picture
        )
        picture = offset.crop(picture)
    detailed = picture
    picture, shrink = _at_pipeline_size(picture, params)
    watch.lap("decode")
    same_bytes = (
        None if box else Image.objects.filter(sha256=sha256_of(data)).values_list("pk", flat=True).first()
    )
    as_stored = not box and shrink == 1.0 and picture.size == (decoded.width, decoded.height)
    jpeg = decoded.jpeg if as_stored else None
    query = _QueryPicture(picture, jpeg, detailed if shrink > 1.0 else None)
    hits, regions = _search_picture(query, clamp_k(k), category, params, watch, same_bytes)

    def to_upload(b: Box) -> Box:
        inner = Box(round(b.x * shrink), round(b.y * shrink), round(b.w * shrink), round(b.h * shrink))
        inner = inner.within(offset)
        return Box(
            round(inner.x * scale), round(inner.y * scale), round(inner.w * scale), round(inner.h * scale)
        )

    for hit in hits:
        hit.box = to_upload(hit.box) if hit.box else None
    shown = [RegionScore(to_upload(r.box), r.score) for r in regions]
    return SearchResult(hits, (time.perf_counter() - started) * 1000, shown, watch.stages)


def _at_pipeline_size(picture: PILImage.Image, params: RetrievalParams) -> tuple[PILImage.Image, float]:
    """The picture at about `query_side` (the pipeline's working size), and how much smaller."""
    shrink = max(picture.size) / params.query_side
    if shrink <= 1.25:
        return picture, 1.0
    size = (max(1, round(picture.width / shrink)), max(1, round(picture.height / shrink)))
    return picture.resize(size, PILImage.Resampling.BILINEAR, reducing_gap=2.0), shrink


def upload_copy_of(
    index: SearchIndex,
    image: Image,
    vector: np.ndarray,
    embed: Callable[[list[PILImage.Image]], np.ndarray] | None,
) -> tuple[int, Decision] | None:
    """The existing item a new upload is a copy of, and why, by search's own stages and
    tiers, the upload itself left out: hashes, vectors, verification of the best candidates,
    the picture's content box and framed pictures (a copy with margins, in a frame, a
    screenshot) searched with `embed` when given, the pixel checks; not the grid over the
    picture (an item somewhere in a scene makes another photo, not a copy of this one).
    `vector` is its stored copy-model vector. Raises `ImageRejected` or OSError for a file
    that cannot be read."""
    params = retrieval_params()
    with image.file.open("rb") as fh:
        data = fh.read()
    decoded = decode_image(
        data,
        max_bytes=settings.UPLOAD_MAX_BYTES,
        max_pixels=settings.UPLOAD_MAX_PIXELS,
        draft_size=params.query_side,
    )
    picture, shrink = _at_pipeline_size(flatten(decoded.image), params)
    as_stored = shrink == 1.0 and picture.size == (decoded.width, decoded.height)
    watch = _Stopwatch()
    query, sure, _ = gather_candidates(
        index,
        picture,
        lambda: vector,
        params,
        watch.lap,
        jpeg=decoded.jpeg if as_stored else None,
        exclude=image.pk,
        details=False,
    )
    depth = _Depth(embed, (), 0, 2 * params.verified_first)
    decisions = _decisions(query, sure, [], params, watch, None, depth)
    copies = [(label, d) for label, d in decisions.items() if d.match in COPY_TIERS]
    return max(copies, key=lambda copy: copy[1].strength, default=None)


@dataclass(frozen=True)
class _QueryPicture:
    picture: PILImage.Image  # at the pipeline's working size
    jpeg: JpegTables | None  # its compression, while it is as stored
    detailed: PILImage.Image | None  # the picture as decoded, when larger


def _search_picture(
    query: _QueryPicture,
    k: int,
    category: str,
    params: RetrievalParams,
    watch: _Stopwatch,
    same_bytes: int | None,
) -> tuple[list[SearchHit], list[RegionScore]]:
    copies_ref, active = copy_model(), active_model()
    index = index_reader(copies_ref).get()
    watch.lap("journal")  # this process's index catching up with the writer's latest changes
    if index is None:
        # No index this process can load (the writer is rebuilding it): look-alikes by an
        # exact scan of the database's vectors meanwhile; copies wait for the index.
        vector = get_embedder(active).embed([query.picture])[0]
        watch.lap("embed")
        return search_vector(vector, k, category=category, ref=active), []
    if len(index) == 0:
        return [], []
    with index.searching():  # the follower's changes wait for this search's lookups
        return _search_index(index, copies_ref, active, query, k, category, params, watch, same_bytes)


def _search_index(
    index: SearchIndex,
    copies_ref: ModelRef,
    active: ModelRef,  # read once per search: a switch during it does not mix two models
    asked: _QueryPicture,
    k: int,
    category: str,
    params: RetrievalParams,
    watch: _Stopwatch,
    same_bytes: int | None,
) -> tuple[list[SearchHit], list[RegionScore]]:
    embedder = get_embedder(copies_ref)
    picture = asked.picture
    query, sure, details = gather_candidates(
        index, picture, lambda: embedder.embed([picture])[0], params, watch.lap, jpeg=asked.jpeg
    )
    query.detailed = asked.detailed
    depth = _Depth(embedder.embed, params.grid, params.verified_whole, params.verified)
    decisions = _decisions(query, sure, details, params, watch, same_bytes, depth)
    hits = ranked_hits(query, decisions, k, category, active, copies_ref, params)
    watch.lap("rank")
    return hits, suggested_regions(query, decisions, params)


@dataclass(frozen=True)
class _Depth:
    """How far `_decisions` looks past the whole picture's best candidates."""

    embed: Callable[[list[PILImage.Image]], np.ndarray] | None  # the regions' (None: no regions)
    grid: tuple[tuple[float, int], ...]  # () : the content box and framed pictures only
    whole: int  # the whole picture's next candidates verified before the regions
    verified: int  # candidates verified in all


def _decisions(
    query: Query,
    sure: bool,
    details: list[int],
    params: RetrievalParams,
    watch: _Stopwatch,
    same_bytes: int | None,
    depth: _Depth,
) -> dict[int, Decision]:
    """Every candidate classified: the best ones verified unless a copy is sure by its hash,
    then the whole picture's next ones; unless one is an unrivalled copy then (or whatever
    was found, when the picture holds several objects not all inside a copy), the picture's
    regions searched and the next candidates verified; still no copy, the pixel checks."""
    verified: dict[int, Verification | None] = {}
    checker = Verifier(query, params)

    def copy_verified() -> bool:
        """A verified copy that no other verified item rivals (`tiers.contested` would make a
        rivalled one a look-alike: the search goes on for the photo itself)."""
        t = params.copies
        checked = [(v, verified_copy(v, query.candidates[la].copy_cosine, t)) for la, v in verified.items()]
        return unrivalled_copy(checked, t)

    def filled_by_copy() -> bool:
        """A verified copy fills most of the picture: it holds no other objects."""
        t = params.copies
        return any(
            v is not None and v.fills >= 0.7 and verified_copy(v, query.candidates[la].copy_cosine, t)
            for la, v in verified.items()
        )

    def explained_by_copies() -> bool:
        """Every object lies inside a verified copy (a pair of shoes in its own photo)."""
        t, found = params.copies, query.candidates
        outlines = [v.box for la, v in verified.items() if v and verified_copy(v, found[la].copy_cosine, t)]
        return all(any(b.covers(o) for b in outlines) for o in query.objects)

    content = (
        _content_copy(query, params, depth.embed, watch) if depth.embed and depth.grid and not sure else None
    )
    contents: list[tuple[int, PixelMatch]] = []  # (several objects' own: `object_content_copies`)
    sure = sure or content is not None
    if not sure:
        # The best whole-picture candidates first, then its next ones: a verified copy needs
        # no region search (a product photo on a larger canvas: its own photo 4th-25th by
        # its vector among look-alikes shot the same way, half of them verified in 40-60 ms
        # by the next 10, where the region search and the rest took about 300). Several
        # objects on a plain background (a listing page, a collage) are each searched and
        # verified alone, whatever the first check found.
        verified = checker.best(params.verified_first, details)
        watch.lap("verify")
        if depth.grid and depth.embed is not None and not filled_by_copy():
            query.objects = region_tools.object_boxes(query.picture)
        several = query.several_objects and not explained_by_copies()
        if depth.whole and (several or not copy_verified()):
            # SIFT only where ORB saw part of the photo: on 30 canvas queries that needed
            # this step the same 15 verified, without 5 more SIFT runs (~100 ms) for others.
            verified |= checker.best(depth.whole, sift_top=0)
            watch.lap("verify")
        if depth.embed is not None and (several or not copy_verified()):
            _search_regions(query, depth.embed, depth.grid, params)
            watch.lap("regions")
            # (a few more for each object: its own candidates lead its verification)
            more = depth.verified - len(verified) + params.verified_per_object * len(query.objects)
            verified |= checker.best(more, every_copy=several)
            watch.lap("verify")
            contents = object_content_copies(query, params) if several else []
            watch.lap("content")
    whole = _whole(query, same_bytes, params)
    evidence = {
        label: _evidence(c, label, whole, verified.get(label)) for label, c in query.candidates.items()
    }
    for label, match in [content] if content is not None else contents:
        evidence[label].pixels[PixelCheck.CONTENT] = match
    decisions = {label: classify(e, params.copies) for label, e in evidence.items()}
    contested(decisions, evidence, params.copies)
    if not any(d.match in COPY_TIERS for d in decisions.values()):
        # No copy yet: is the picture part of a candidate's photo, or all of it smaller or
        # under marks?
        _check_pixels(query, evidence, decisions, params, whole, checker)
        contested(decisions, evidence, params.copies)
        watch.lap("pixels")
    return decisions


def _content_copy(
    query: Query,
    params: RetrievalParams,
    embed: Callable[[list[PILImage.Image]], np.ndarray],
    watch: _Stopwatch,
) -> tuple[int, PixelMatch] | None:
    """A photo fitted into a larger canvas: its content is the photo's content
    (`search_content.content_copy`); nothing to verify."""
    found = content_copy(query, params, embed)
    watch.lap("content")
    if found is None:
        return None
    label, match, cosine = found
    query.candidates.setdefault(label, Candidate(cosine=cosine))
    if match.box is not None:  # (where it is: a region the answer suggests)
        query.regions.append(RegionScore(match.box, cosine))
    return label, match


def _check_pixels(
    query: Query,
    evidence: dict[int, Evidence],
    decisions: dict[int, Decision],
    params: RetrievalParams,
    whole: _Whole,
    checker: Verifier,
) -> None:
    """The candidates' photos searched for the picture's pixels (`search_checks.match_pixels`),
    and decided again; a crop of most of a photo is verified now (`tiers.crop_needs_features`)."""
    for label, pixels in match_pixels(query, params):
        if label not in evidence:  # found by its pixels alone (further down the vector's list)
            evidence[label] = _evidence(query.candidates[label], label, whole, None)
        e = evidence[label]
        e.pixels[pixels.check] = pixels
        if e.verification is None and crop_needs_features(pixels, params.copies):
            e.verification = checker.best(0, also=[label]).get(label)
        decisions[label] = classify(e, params.copies)


def _search_regions(
    query: Query,
    embed: Callable[[list[PILImage.Image]], np.ndarray],
    grid: tuple[tuple[float, int], ...],
    params: RetrievalParams,
) -> None:
    boxes = query.objects + [
        b for b in region_tools.proposals(query.picture, scales=grid) if b not in query.objects
    ]
    if not boxes:
        return
    vectors = embed([b.crop(query.picture) for b in boxes])
    for box, vector in zip(boxes, vectors):
        found = query.neighbours(vector, max(5, params.candidates // 3))
        for label, cosine in found:
            query.found(label, cosine, box)
        if found:
            query.regions.append(RegionScore(box, found[0][1]))


@dataclass(frozen=True)
class _Whole:
    """What is known of the whole picture against its candidates."""

    same_bytes: int | None  # the item whose file it is
    grayscale: bool
    stretched: set[int]  # found by their hash, of another shape
    recoloured: set[int]  # found by their hash as the same picture, in other colours


def _whole(query: Query, same_bytes: int | None, params: RetrievalParams) -> _Whole:
    """The hash sees neither a photo's shape nor its colours: a candidate it takes for the
    picture, stretched or squeezed, or black and white, in another hue, brighter..., is not
    "the same picture". The candidates found by their hash are read once for both."""
    hashed = {label: c.hash_distance for label, c in query.candidates.items() if c.hash_distance is not None}
    rows = Image.objects.filter(pk__in=list(hashed)).values_list("pk", "width", "height", "file")
    near = {pk for pk, distance in hashed.items() if (distance or 0) <= params.copies.loose_hash_distance}
    thumbnail = colour_thumbnail(query.picture) if near else None  # the picture's colours, once
    stretched, recoloured = set(), set()
    for pk, width, height, name in rows if hashed else ():
        if not same_shape(query.picture.size, (width, height)):
            stretched.add(pk)
        elif thumbnail is not None and pk in near and not colours_kept(thumbnail, stored_colour(pk, name)):
            recoloured.add(pk)
    return _Whole(same_bytes, is_grayscale(query.picture), stretched, recoloured)


def _evidence(c: Candidate, label: int, whole: _Whole, verification: Verification | None) -> Evidence:
    return Evidence(
        cosine=c.cosine,
        region=c.region,
        same_bytes=label == whole.same_bytes,
        hash_distance=c.hash_distance,
        hash_variant=c.hash_variant,
        hash_gap=c.hash_gap,
        detail_cosine=c.detail_cosine,
        object_cosine=c.object_cosine,
        same_aspect=label not in whole.stretched,
        same_colours=label not in whole.recoloured,
        verification=verification,
        grayscale_query=whole.grayscale,
    )


def is_grayscale(picture: PILImage.Image) -> bool:
    """No part of the picture has colour (JPEG's colour noise aside). Counted per pixel, not
    on average: a red tie on a white page is a colour photo, though most of it is white."""
    small = np.asarray(picture.convert("RGB").resize((64, 64), PILImage.Resampling.BOX), dtype=np.int16)
    colour = np.abs(small - small.mean(axis=2, keepdims=True)).max(axis=2)
    return bool((colour > 12).mean() < 0.005)
