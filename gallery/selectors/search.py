"""Search by image and similar items. Searches run in the web process: the query is
decoded and embedded here (model loaded once per process) and the saved index is read
through a per-process `IndexReader` that follows the writer's new versions. Every hit is
re-checked in the database, so an item hidden a moment ago never shows."""

import time
from dataclasses import dataclass

import numpy as np
from django.conf import settings

from ..embedders import ModelRef, active_model, get_embedder
from ..imaging import decode_image
from ..index import IndexReader
from ..models import Embedding, Image

_readers: dict[str, IndexReader] = {}


def index_reader(ref: ModelRef | None = None) -> IndexReader:
    """The reader of a model's index (the active model's by default)."""
    directory = (ref or active_model()).index_dir
    key = str(directory)
    if key not in _readers:
        _readers[key] = IndexReader(directory, ef=settings.INDEX_EF_SEARCH)
    return _readers[key]


def index_readers_forget() -> None:
    """Drop every reader of this process (their indexes load again on the next search)."""
    _readers.clear()


@dataclass
class SearchHit:
    image: Image
    score: float


@dataclass
class SearchResult:
    hits: list[SearchHit]
    took_ms: float


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
    """Nearest searchable items. Over-fetches, then keeps only rows the database says are
    searchable. A hash model's index is searched by Hamming distance, re-ranked by cosine."""
    ref = ref or active_model()
    index = index_reader(ref).get()
    if index is None or len(index) == 0:
        return []
    allowed = None
    if category:
        allowed = set(Image.objects.searchable().filter(category=category).values_list("pk", flat=True))
        if not allowed:
            return []
    wanted = k + (1 if exclude_id is not None else 0)
    fetch = wanted + max(10, wanted // 2)
    if ref.bits:
        hits = index.hamming_query(vector, fetch, allowed, candidates=max(200, 10 * fetch))
    else:
        hits = index.query(vector, fetch, allowed)
    rows = Image.objects.searchable().in_bulk([label for label, _ in hits])
    result = []
    for label, score in hits:
        if label == exclude_id or label not in rows:
            continue
        result.append(SearchHit(rows[label], max(-1.0, min(1.0, score))))
        if len(result) == k:
            break
    return result


def image_search_by_image(data: bytes, *, k: int = 20, category: str = "") -> SearchResult:
    """Raises `ImageRejected` for bad query files, exactly like an upload."""
    started = time.perf_counter()
    decoded = decode_image(
        data,
        max_bytes=settings.UPLOAD_MAX_BYTES,
        max_pixels=settings.UPLOAD_MAX_PIXELS,
        draft_size=2 * settings.EMBEDDER_IMAGE_SIZE,
    )
    ref = active_model()  # one model for the query vector and the index, even mid-switch
    vector = get_embedder(ref).embed([decoded.image])[0]
    hits = search_vector(vector, clamp_k(k), category=category, ref=ref)
    return SearchResult(hits, (time.perf_counter() - started) * 1000)


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
    started = time.perf_counter()
    ref = active_model()
    vector = image_vector(image, ref)
    hits = [] if vector is None else search_vector(vector, clamp_k(k), exclude_id=image.pk, ref=ref)
    return SearchResult(hits, (time.perf_counter() - started) * 1000)
