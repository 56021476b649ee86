"""Similar items and the shared parts of search: the per-process index readers, searching one
model's vectors, the result types. Searches run in the web process (models loaded once per
process; each index read through a per-process `IndexReader` that follows the writer's new
versions). Every hit is re-checked in the database, so an item hidden a moment ago never shows.
Search by image (the retrieval pipeline) is in `search_by_image`."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
from django.conf import settings

from ..embedders import ModelRef, active_model, copy_model, served_models
from ..index import IndexReader, VectorIndex
from ..index.pgvector import PgVectorIndex, PgVectorReader
from ..models import Embedding, Image, ImageQuerySet
from ..retrieval.params import retrieval_params
from ..retrieval.regions import Box
from ..retrieval.tiers import Evidence, Match, classify, same_shape
from .index_journal import DATABASE_JOURNAL

logger = logging.getLogger(__name__)
_readers: dict[str, IndexReader | PgVectorReader] = {}
Hits = list[tuple[int, float]]  # (label, cosine similarity), best first


def index_reader(ref: ModelRef | None = None) -> IndexReader | PgVectorReader:
    """The reader of a model's index (the active model's by default): its hnswlib files, or
    with `VECTOR_BACKEND=pgvector` the database's table. The readers (and indexes) of models
    no longer served are let go."""
    ref = ref or active_model()
    directory = ref.index_dir
    key = str(directory)
    keep = {str(served.index_dir) for served in served_models()} | {key}
    for old in [old for old in list(_readers) if old not in keep]:
        _readers.pop(old).close()  # a model no longer served: its index is let go
    if key not in _readers and vectors_in_database():
        _readers[key] = PgVectorReader(pgvector_index(ref))
    if key not in _readers:
        from ..services.index_writer import index_request_rebuild  # a write: asks the writer

        _readers[key] = IndexReader(
            directory,
            ef=settings.INDEX_EF_SEARCH,
            journal=DATABASE_JOURNAL,
            on_unusable=index_request_rebuild,
            follow=settings.INDEX_FOLLOW_SECONDS,
        )
    return _readers[key]


SearchIndex = VectorIndex | PgVectorIndex  # what a reader's `get` gives: both answer the same questions


def vectors_in_database() -> bool:
    """`VECTOR_BACKEND=pgvector`: the vectors are searched in PostgreSQL, not in index files."""
    return bool(settings.VECTOR_BACKEND == "pgvector")


_pg_indexes: dict[str, PgVectorIndex] = {}


def pgvector_index(ref: ModelRef) -> PgVectorIndex:
    """A model's vectors in PostgreSQL (`VECTOR_BACKEND=pgvector`), one object per process,
    with the configured HNSW parameters."""
    if ref.views != 1:
        raise ValueError(f"{ref.name}: items of {ref.views} vectors are not held in pgvector")
    if ref.name not in _pg_indexes:
        _pg_indexes[ref.name] = PgVectorIndex(
            ref.name,
            ref.dim,
            ef=settings.INDEX_EF_SEARCH,
            m=settings.INDEX_M,
            ef_construction=settings.INDEX_EF_CONSTRUCTION,
        )
    return _pg_indexes[ref.name]


def index_readers_warm() -> None:
    """Every served model's index loaded and caught up with the journal at a web process's
    start, the copy model's details included (else loaded by the first search that needs
    them). A bad index does not stop the others: its reader rebuilds and retries."""
    for ref in served_models():
        try:
            index_reader(ref).get()
        except Exception:
            logger.exception("the index of %s could not be loaded at start", ref.name)


def index_readers_forget() -> None:
    """Drop every reader of this process (their indexes load again on the next search)."""
    for reader in _readers.values():
        reader.close()
    _readers.clear()


@dataclass
class SearchHit:
    image: Image
    score: float  # cosine similarity of the vectors that ranked it
    match: str = Match.SIMILAR.value
    explanation: str = "similar colours and shape"
    box: Box | None = None  # where the item is in the query, in pixels of the uploaded image


@dataclass
class RegionScore:
    box: Box  # pixels of the uploaded image
    score: float  # cosine similarity of the best item found in it


@dataclass
class SearchResult:
    hits: list[SearchHit]
    took_ms: float
    regions: list[RegionScore] = field(default_factory=list)
    stages_ms: dict[str, float] = field(default_factory=dict)


def clamp_k(k: int | str | None) -> int:
    """A result count within 1..SEARCH_MAX_K (the default for what is not a number)."""
    try:
        value = int(k) if k is not None else int(settings.SEARCH_DEFAULT_K)
    except ValueError:
        value = int(settings.SEARCH_DEFAULT_K)
    return max(1, min(value, int(settings.SEARCH_MAX_K)))


def search_vector(
    vector: np.ndarray,
    k: int,
    *,
    category: str = "",
    exclude_id: int | None = None,
    ref: ModelRef | None = None,
) -> list[SearchHit]:
    """Nearest searchable items by one model's vector. Over-fetches, then keeps only rows the
    database says are searchable. A hash model's index is searched by Hamming distance,
    re-ranked by cosine."""
    ref = ref or active_model()
    index = index_reader(ref).get()
    wanted = k + (1 if exclude_id is not None else 0)
    fetch = wanted + max(10, wanted // 2)
    if index is None:
        # No index this process can load (a broken file; the writer is rebuilding it): an
        # exact scan of the database's vectors answers meanwhile.
        members = Image.objects.searchable()
        hits = _scan_database(ref, members.filter(category=category) if category else members, vector, fetch)
    elif len(index) == 0:
        return []
    elif category:
        hits = _category_hits(index, vector, fetch, category, ref=ref)
    elif ref.bits:
        hits = index.hamming_query(vector, fetch, candidates=max(200, 10 * fetch))
    else:
        hits = index.query(vector, fetch)
    rows = Image.objects.searchable().in_bulk([label for label, _ in hits])
    result = []
    for label, score in hits:
        if label == exclude_id or label not in rows:
            continue
        result.append(SearchHit(rows[label], max(-1.0, min(1.0, score))))
        if len(result) == k:
            break
    return result


SMALL_CATEGORY = 5000  # items: their vectors read from the database and scanned exactly
LARGE_CATEGORY_SHARE = 0.02  # of the index: an unfiltered search over-fetched, members kept (bench/scale.py: faster than the set filter from 1 % up)


def _category_hits(
    index: SearchIndex, vector: np.ndarray, fetch: int, category: str, *, ref: ModelRef
) -> Hits:
    """The `fetch` nearest items of one category without a per-query set of the whole
    category where it would be large: a small category's vectors are read from the database
    (one query; hnswlib's `get_items` costs about 0.1 ms per item) and scanned exactly; a large
    one (2 % of the index or more) comes from an unfiltered search over-fetched by its
    share, members kept by one database check; only in between does hnswlib filter by a set."""
    members = Image.objects.searchable().filter(category=category)
    small = members.values_list("pk", flat=True)[: SMALL_CATEGORY + 1]
    if len(small) <= SMALL_CATEGORY:
        return _scan_database(ref, members, vector, fetch)
    share = members.count() / max(1, len(index))
    if share >= LARGE_CATEGORY_SHARE:
        over = min(len(index), int(2 * fetch / share) + 10)
        hits = (
            index.hamming_query(vector, over, candidates=max(200, 10 * over))
            if ref.bits
            else index.query(vector, over)
        )
        inside = set(members.filter(pk__in=[label for label, _ in hits]).values_list("pk", flat=True))
        kept = [(label, score) for label, score in hits if label in inside][:fetch]
        if len(kept) >= fetch or over >= len(index):
            return kept
    allowed = set(members.values_list("pk", flat=True))
    if ref.bits:
        return index.hamming_query(vector, fetch, allowed, candidates=max(200, 10 * fetch))
    return index.query(vector, fetch, allowed)


def _scan_database(ref: ModelRef, members: ImageQuerySet, vector: np.ndarray, fetch: int) -> Hits:
    """The `fetch` nearest of `members` by an exact scan of their stored vectors (read in chunks)."""
    rows = Embedding.objects.filter(model_name=ref.name, image__in=members).values_list("image_id", "vector")
    query = np.asarray(vector, dtype=np.float32)
    labels: list[int] = []
    scores: list[float] = []
    chunk: list[tuple[int, bytes]] = []

    def scan() -> None:
        matrix = np.frombuffer(b"".join(v for _, v in chunk), dtype=np.float32).reshape(len(chunk), -1)
        labels.extend(image_id for image_id, _ in chunk)
        scores.extend((matrix @ query).tolist())
        chunk.clear()

    for image_id, stored in rows.iterator(chunk_size=5000):
        chunk.append((image_id, bytes(stored)))
        if len(chunk) == 5000:
            scan()
    if chunk:
        scan()
    best = np.argsort(-np.asarray(scores), kind="stable")[:fetch]
    return [(labels[i], scores[i]) for i in best]


def image_vector(image: Image, ref: ModelRef | None = None) -> np.ndarray | None:
    """The item's vector under the model: from the loaded index, else the database."""
    ref = ref or active_model()
    index = index_reader(ref).get()
    vector = index.vector(image.pk) if index is not None else None
    if vector is None:
        row = Embedding.objects.filter(image=image, model_name=ref.name).first()
        vector = row.as_array() if row else None
    return vector


def image_similar(image: Image, *, k: int = 20) -> SearchResult:
    """Items like this one; copies of it first: by their hashes and the copy model's vectors,
    and those noted at upload (`near_duplicate_of`, by search's whole pipeline: a turned or
    cropped copy too), whether or not the active model ranks them among its nearest."""
    started = time.perf_counter()
    params = retrieval_params()
    active, copies_ref = active_model(), copy_model()
    vector = image_vector(image, active)
    hits = [] if vector is None else search_vector(vector, clamp_k(k), exclude_id=image.pk, ref=active)
    index = index_reader(copies_ref).get()
    copy_vector = image_vector(image, copies_ref)
    if index is not None and image.pdq is not None and copy_vector is not None:
        own = np.frombuffer(bytes(image.pdq), dtype=np.uint8)
        matches = index.hash_index().within(own, params.copies.loose_hash_distance)
        distances = {m.label: m.distance for m in matches}
        for hit in hits:
            stored = index.vector(hit.image.pk)
            distance = distances.get(hit.image.pk)
            cosine = float(stored @ copy_vector) if stored is not None else hit.score
            shape = same_shape((image.width, image.height), (hit.image.width, hit.image.height))
            decision = classify(
                Evidence(cosine=cosine, hash_distance=distance, same_aspect=shape), params.copies
            )
            hit.match, hit.explanation = decision.match.value, decision.explanation
    _noted_copies_first(image, hits, clamp_k(k), vector, active)
    return SearchResult(hits, (time.perf_counter() - started) * 1000)


def _noted_copies_first(
    image: Image, hits: list[SearchHit], k: int, vector: np.ndarray | None, ref: ModelRef
) -> None:
    """The copies noted at upload (the item's original, the uploads that copy it) labelled
    so, those missing added; then copies first, at most `k` hits."""
    noted: dict[int, str] = {
        pk: why or "an edited copy of this photo"
        for pk, why in Image.objects.searchable()
        .filter(near_duplicate_of=image)
        .values_list("pk", "near_duplicate_explanation")
    }
    if image.near_duplicate_of_id is not None:
        noted[image.near_duplicate_of_id] = "the photo this one is a copy of"
    shown = {hit.image.pk: hit for hit in hits}
    missing = Image.objects.searchable().in_bulk([pk for pk in noted if pk not in shown])
    for row in missing.values():
        theirs = image_vector(row, ref) if vector is not None else None
        hits.insert(0, SearchHit(row, float(theirs @ vector) if theirs is not None else 0.0))
    for hit in hits:
        if hit.image.pk in noted and hit.match not in (Match.EXACT.value, Match.NEAR_DUPLICATE.value):
            hit.match, hit.explanation = Match.NEAR_DUPLICATE.value, noted[hit.image.pk]
    hits.sort(key=lambda h: h.match not in (Match.EXACT.value, Match.NEAR_DUPLICATE.value))
    del hits[k:]
