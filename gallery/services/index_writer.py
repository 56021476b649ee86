"""The index's single writer (the index queue, one process; `rebuild_index` and activation
take the same lock). Only these functions write an index: `index_sync`, `index_remove`,
`index_rebuild` and, for a model being activated, `index_build`."""

import time
from pathlib import Path

import numpy as np
from django.conf import settings
from django.utils import timezone

from ..embedders import ModelRef, active_model
from ..index import IndexMeta, VectorIndex, write_lock
from ..models import Embedding, Image, ImageQuerySet
from . import dispatch
from .recovery import images_catch_up_with_active_model

_writer_cache: dict[str, VectorIndex] = {}


def _new_index(model: str, dim: int, capacity: int) -> VectorIndex:
    return VectorIndex.create(
        model,
        dim,
        capacity=max(capacity, 1024),
        m=settings.INDEX_M,
        ef_construction=settings.INDEX_EF_CONSTRUCTION,
        ef=settings.INDEX_EF_SEARCH,
    )


def _writer_index(ref: ModelRef) -> VectorIndex | None:
    """The writer's in-memory index, reloaded when another writer saved a newer version.
    Call with the write lock held."""
    directory = ref.index_dir
    key = str(directory)
    on_disk = IndexMeta.read(directory)
    cached = _writer_cache.get(key)
    if on_disk is None:
        _writer_cache.pop(key, None)
        return None
    if cached is None or cached.meta.version != on_disk.version:
        cached = VectorIndex.load(directory, ef=settings.INDEX_EF_SEARCH)
        if cached is None:
            return None
        _writer_cache[key] = cached
    if cached.meta.model != ref.name or cached.meta.dim != ref.dim:
        return None
    return cached


def stored_vectors(images: ImageQuerySet, model_name: str) -> tuple[list[int], list[np.ndarray]]:
    """(ids, vectors) of the images' stored embeddings under one model."""
    rows = Embedding.objects.filter(image__in=images, model_name=model_name).values_list("image_id", "vector")
    ids, vectors = [], []
    for image_id, vector in rows.iterator(chunk_size=2000):
        ids.append(image_id)
        vectors.append(np.frombuffer(bytes(vector), dtype=np.float32))
    return ids, vectors


def index_sync(image_ids: list[int] | None = None) -> int:
    """Add every embedded image still marked processing (and the given indexed ones, e.g.
    just approved) to the index if it may be searched, save, and mark them indexed.
    With no usable index on disk, rebuild it from the database instead."""
    ref = active_model(fresh=True)
    added = index_sync_model(ref, image_ids)
    if active_model(fresh=True).name != ref.name:
        # The model was switched while we worked: what we just marked indexed went into the
        # old index, after the switch's own catch-up had looked.
        images_catch_up_with_active_model()
    return added


def index_sync_model(ref: ModelRef, image_ids: list[int] | None) -> int:
    """`index_sync` for one given model's index (the active one, read by the caller)."""
    model, directory = ref.name, ref.index_dir
    waiting = Image.objects.processing().with_vector(model)
    if not image_ids and IndexMeta.read(directory) is not None and not waiting.exists():
        return 0  # a duplicate update: an earlier one took everything
    _pace_large_saves(directory)
    with write_lock(directory):
        index = _writer_index(ref)
        if index is None:
            return _index_rebuild_locked(ref)
        processing = list(waiting.values_list("pk", flat=True))
        candidates = Image.objects.filter(pk__in=processing + list(image_ids or [])).indexable()
        ids, vectors = stored_vectors(candidates, model)
        if ids:
            index.add(ids, np.stack(vectors))
            index.save(directory)
        Image.objects.filter(pk__in=processing).processing().update(
            status=Image.Status.INDEXED, indexed_at=timezone.now(), error=""
        )
        # A hide or rejection that committed while we were adding: take it out again at once.
        gone = list(Image.objects.filter(pk__in=ids).unsearchable().values_list("pk", flat=True))
        if gone and index.remove(gone):
            index.save(directory)
        return len(ids)


def _pace_large_saves(directory: Path) -> None:
    """Every save rewrites the whole index file and makes every web process reload it. A
    large index is saved at most every few seconds (one second per 20,000 items, at most 5):
    updates queued meanwhile are taken by the next save, so a bulk import is not slowed down
    by rewriting hundreds of megabytes for every batch."""
    meta = IndexMeta.read(directory)
    if meta is None:
        return
    interval = min(5.0, meta.count / 20000)
    last_save = (directory / "meta.json").stat().st_mtime
    wait = last_save + interval - time.time()
    if wait > 0:
        time.sleep(wait)


def index_remove(image_ids: list[int]) -> int:
    """Drop the given images from the active index unless they may be searched again."""
    ref = active_model(fresh=True)
    directory = ref.index_dir
    with write_lock(directory):
        index = _writer_index(ref)
        if index is None:
            return 0
        gone = list(Image.objects.filter(pk__in=image_ids).unsearchable().values_list("pk", flat=True))
        removed = index.remove(gone)
        if removed:
            index.save(directory)
        return removed


def index_rebuild() -> int:
    """Build a fresh index from the embeddings in the database and switch to it atomically."""
    ref = active_model(fresh=True)
    with write_lock(ref.index_dir):
        return _index_rebuild_locked(ref)


def index_build(ref: ModelRef) -> int:
    """A fresh index of `ref`'s vectors of every indexable image, saved atomically in its own
    folder. Takes that folder's write lock."""
    with write_lock(ref.index_dir):
        return _index_build_locked(ref)


def _index_build_locked(ref: ModelRef) -> int:
    directory = ref.index_dir
    directory.mkdir(parents=True, exist_ok=True)
    ids, vectors = stored_vectors(Image.objects.indexable(), ref.name)
    previous = IndexMeta.read(directory)
    index = _new_index(ref.name, ref.dim, capacity=int(len(ids) * 1.25))
    if previous:
        index.meta.version = previous.version
    for start in range(0, len(ids), 10000):
        index.add(ids[start : start + 10000], np.stack(vectors[start : start + 10000]))
    index.save(directory)
    _writer_cache[str(directory)] = index
    return len(ids)


def _index_rebuild_locked(ref: ModelRef) -> int:
    model = ref.name
    count = _index_build_locked(ref)
    embedded = Image.objects.processing().with_vector(model)
    Image.objects.filter(pk__in=list(embedded.values_list("pk", flat=True))).update(
        status=Image.Status.INDEXED, indexed_at=timezone.now(), error=""
    )
    # Indexed images without an embedding for this model (a new embedder): embed them again.
    missing = list(
        Image.objects.filter(status=Image.Status.INDEXED).without_vector(model).values_list("pk", flat=True)
    )
    if missing:
        Image.objects.filter(pk__in=missing).update(status=Image.Status.PROCESSING, embed_attempts=0)
        dispatch.images_embed(missing)
    return count
