"""The indexes' single writer (the index queue, one process; `rebuild_index` and activation
take the same locks). Only these functions write an index: `index_sync`, `index_remove`,
`index_rebuild` and, for a model being activated, `index_build`.

Each served model has its index (`embedders.served_models`): the active model's, and the copy
model's, which also holds the items' perceptual hashes. An image is marked indexed once it is
in all of them.

A change is written to the journal (`IndexChange`) and replayed onto the writer's index like
any reader's; a snapshot is saved only when enough changed since the last one (or it is old),
and the journal before the previous snapshot is pruned then. A rebuild starts a new
generation, which every reader loads in the background."""

import logging
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from ..embedders import ModelRef, active_model, copy_model, served_models
from ..index import (
    IndexMeta,
    IndexUnusable,
    VectorIndex,
    background_save,
    journal_head_touch,
    snapshot_lock,
    write_lock,
)
from ..index.compact import Projection
from ..index.pgvector import PgVectorIndex
from ..models import Image, IndexChange
from ..selectors.catalogue import IdWindows, stored_chunks
from ..selectors.index_journal import DATABASE_JOURNAL, index_hashes
from ..selectors.search import SearchIndex, pgvector_index, vectors_in_database
from . import dispatch
from .duplicates import near_duplicates_note
from .index_compact import compact_due, index_compact_step, projection_for
from .index_snapshots import background_save_taken, snapshot_if_due
from .recovery import images_catch_up_with_served_models

logger = logging.getLogger(__name__)

_writer_cache: dict[str, VectorIndex] = {}
RECONCILE_WINDOW = 100_000  # image ids one reconcile run compares (see index_reconcile)
_reconcile_windows = IdWindows(RECONCILE_WINDOW)  # by model


def index_empty(
    ref: ModelRef, capacity: int, projection: Projection | None = None, learned_on: int = 0
) -> VectorIndex:
    """A new, empty in-memory index for `ref`'s vectors with the configured HNSW parameters
    (not saved: the caller fills it and saves it under the write lock)."""
    return VectorIndex.create(
        ref.name,
        ref.dim,
        views=ref.views,
        capacity=max(capacity, 1024),
        m=settings.INDEX_M,
        ef_construction=settings.INDEX_EF_CONSTRUCTION,
        ef=settings.INDEX_EF_SEARCH,
        projection=projection,
        learned_on=learned_on,
    )


@contextmanager
def _writing(ref: ModelRef) -> Iterator[None]:
    """The writer's lock on a model's index: the index folder's `flock`, or with pgvector a
    database-wide advisory lock (writers on several machines), its changes one transaction."""
    if not vectors_in_database():
        with write_lock(ref.index_dir):
            yield
        return
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"index {ref.name}"])
        yield


@contextmanager
def _writing_outside_transactions(ref: ModelRef) -> Iterator[None]:
    """`_writing`'s lock (pgvector) held by the session, for work that commits as it goes."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(hashtext(%s))", [f"index {ref.name}"])
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(hashtext(%s))", [f"index {ref.name}"])


def _writer_index(ref: ModelRef) -> SearchIndex | None:
    """The writer's index: the database's table (pgvector), or the in-memory hnswlib index,
    reloaded when another writer saved a newer version. Call with the write lock held."""
    if vectors_in_database():
        index = pgvector_index(ref)
        index.ensure()
        return index
    directory = ref.index_dir
    key = str(directory)
    cached = _writer_cache.get(key)
    background_save_taken(ref, cached)
    on_disk = IndexMeta.read(directory)
    if on_disk is None:
        _writer_cache.pop(key, None)
        return None
    ours = background_save.in_flight(directory)
    if (
        cached is None
        # another writer's snapshot, or a broken one (not ours, still being written)
        or (cached.meta.version != on_disk.version and not (ours and ours.version == on_disk.version))
        or cached.meta.generation != on_disk.generation
        or cached.meta.journal_seq < on_disk.journal_floor
    ):
        try:
            cached = VectorIndex.load(directory, ef=settings.INDEX_EF_SEARCH)
        except IndexUnusable as exc:
            logger.error("rebuilding the index from the database: %s", exc)
            cached = None
        if cached is None:
            _writer_cache.pop(key, None)
            return None
        _writer_cache[key] = cached
    if cached.meta.model != ref.name or (cached.meta.dim, cached.meta.views) != (ref.dim, ref.views):
        return None
    cached.catch_up(DATABASE_JOURNAL)  # what another writer (or this one, before a restart) did
    return cached


def _journal_write(
    ref: ModelRef, index: SearchIndex, *, add: Sequence[int] = (), remove: Sequence[int] = ()
) -> tuple[int, int]:
    """Record changes in the journal and apply them to the writer's index as every reader will
    (pgvector: write the rows every reader searches); returns (added, removed) as applied."""
    if isinstance(index, PgVectorIndex):
        return _rows_put(ref, index, list(add)), index.remove(list(remove))
    rows = [IndexChange(model_name=ref.name, image_id=i, op=IndexChange.Op.ADD) for i in add]
    rows += [IndexChange(model_name=ref.name, image_id=i, op=IndexChange.Op.REMOVE) for i in remove]
    if not rows:
        return 0, 0
    IndexChange.objects.bulk_create(rows, batch_size=2000)
    head = (
        IndexChange.objects.filter(model_name=ref.name).order_by("-id").values_list("id", flat=True).first()
    )
    # Readers look when this changes: now (a reader in this transaction sees the rows), and once
    # they are committed (the others see them then).
    journal_head_touch(ref.index_dir, head or 0)
    transaction.on_commit(lambda: journal_head_touch(ref.index_dir, head or 0))
    applied = index.catch_up(DATABASE_JOURNAL)
    return applied.added, applied.removed


def _rows_put(ref: ModelRef, index: PgVectorIndex, ids: list[int]) -> int:
    """The items' stored vectors (and hashes, for the copy model) into the database's index."""
    return sum(index.put(rows) for rows in _rows_of(ref, ids))


def _rows_of(ref: ModelRef, ids: list[int]) -> Iterator[list[tuple[int, np.ndarray, bytes | None]]]:
    """(id, stored vector, hash for the copy model) of the items, a chunk at a time."""
    for chunk, vectors in stored_chunks(ref, ids):
        hashes = dict(zip(chunk, index_hashes(ref.name, chunk)))
        yield [(i, v, hashes.get(i)) for i, v in zip(chunk, vectors)]


def index_snapshot_wait() -> None:
    """Wait for this process's background snapshots, and take them (tests; a process about to
    end may, though a child left running still writes its snapshot)."""
    for ref in served_models(active_model(fresh=True)):
        background_save_taken(ref, _writer_cache.get(str(ref.index_dir)), wait=True)


def index_sync(image_ids: list[int] | None = None, note_copies: list[int] | None = None) -> int:
    """Add every image still marked processing that has all it needs (and the given indexed
    ones, e.g. just approved or just hashed) to every served index if it may be searched,
    save, and mark them indexed. With no usable index on disk, rebuild it from the database.
    Then note which existing item each of `note_copies` (new uploads) is a copy of."""
    active = active_model(fresh=True)
    added = index_sync_models(served_models(active), image_ids)
    if note_copies:
        ref = copy_model()
        with _writing(ref):
            index = _writer_index(ref)
            if index is not None:
                near_duplicates_note(index, note_copies)
    if active_model(fresh=True).name != active.name:
        # The model was switched while we worked: what we just marked indexed went into the
        # old index, after the switch's own catch-up had looked.
        images_catch_up_with_served_models()
    return added


def index_sync_models(refs: list[ModelRef], image_ids: list[int] | None) -> int:
    """`index_sync` for the given models' indexes (the served ones, read by the caller)."""
    names = [r.name for r in refs]
    waiting = Image.objects.processing().complete(names)
    if not image_ids and all(IndexMeta.read(r.index_dir) for r in refs) and not waiting.exists():
        return 0  # a duplicate update: an earlier one took everything
    processing = list(waiting.values_list("pk", flat=True))
    added = 0
    for ref in refs:
        added = max(added, _sync_one(ref, processing + list(image_ids or [])))
    Image.objects.filter(pk__in=processing).processing().update(
        status=Image.Status.INDEXED, indexed_at=timezone.now(), error=""
    )
    return added


def _sync_one(ref: ModelRef, ids: list[int]) -> int:
    with _writing(ref):
        index = _writer_index(ref)
        if index is None:
            return _index_build_locked(ref)
        candidates = Image.objects.filter(pk__in=ids).indexable().with_vector(ref.name)
        added = list(candidates.values_list("pk", flat=True))
        _journal_write(ref, index, add=added)
        # A hide or rejection that committed while we were adding: take it out again at once.
        gone = list(
            Image.objects.filter(pk__in=added)
            .unsearchable()
            .exclude(status=Image.Status.PROCESSING)
            .values_list("pk", flat=True)
        )
        _journal_write(ref, index, remove=gone)
        snapshot_if_due(ref, index, by_age=False)
        return len(added)


def index_remove(image_ids: list[int]) -> int:
    """Drop the given images from every served index unless they may be searched again."""
    staying = set(Image.objects.filter(pk__in=image_ids).searchable().values_list("pk", flat=True))
    gone = [pk for pk in image_ids if pk not in staying]  # deleted rows too
    removed = 0
    for ref in served_models(active_model(fresh=True)):
        with _writing(ref):
            index = _writer_index(ref)
            if index is None:
                continue
            _, count = _journal_write(ref, index, remove=gone)
            snapshot_if_due(ref, index, by_age=False)
            removed = max(removed, count)
    return removed


def index_rebuild() -> int:
    """Build fresh indexes of every served model from the database and switch to them
    atomically; images that lack something get it again."""
    refs = served_models(active_model(fresh=True))
    count = 0
    for ref in refs:
        count = max(count, index_build(ref))
    names = [r.name for r in refs]
    embedded = Image.objects.processing().complete(names)
    Image.objects.filter(pk__in=list(embedded.values_list("pk", flat=True))).update(
        status=Image.Status.INDEXED, indexed_at=timezone.now(), error=""
    )
    # Indexed images without something for these models (a new embedder): embed them again.
    missing = list(
        Image.objects.filter(status=Image.Status.INDEXED).lacking(names).values_list("pk", flat=True)
    )
    if missing:
        Image.objects.filter(pk__in=missing).update(status=Image.Status.PROCESSING, embed_attempts=0)
        dispatch.images_embed(missing, bulk=True)
    return count


def index_build(ref: ModelRef) -> int:
    """A fresh index of `ref`'s vectors of every indexable image, saved atomically in its own
    folder (pgvector: its rows replaced in one transaction, or for a model no search uses yet,
    loaded in bulk). Takes the index's write lock."""
    if vectors_in_database() and ref.name not in {r.name for r in served_models(active_model(fresh=True))}:
        with _writing_outside_transactions(ref):
            ids = list(Image.objects.indexable().with_vector(ref.name).values_list("pk", flat=True))
            return pgvector_index(ref).load(_rows_of(ref, ids), projection=projection_for(ref, ids))
    with _writing(ref):
        return _index_build_locked(ref)


def _index_build_locked(ref: ModelRef) -> int:
    if vectors_in_database():
        table = pgvector_index(ref)
        table.ensure()
        table.clear()
        return _rows_put(
            ref, table, list(Image.objects.indexable().with_vector(ref.name).values_list("pk", flat=True))
        )
    directory = ref.index_dir
    directory.mkdir(parents=True, exist_ok=True)
    # The journal so far is what this build reads from the database: it starts after it.
    head = (
        IndexChange.objects.filter(model_name=ref.name).order_by("-id").values_list("id", flat=True).first()
    )
    ids = list(Image.objects.indexable().with_vector(ref.name).order_by("pk").values_list("pk", flat=True))
    previous = IndexMeta.read(directory)
    projection = projection_for(ref, ids)
    index = index_empty(ref, capacity=int(len(ids) * 1.25), projection=projection, learned_on=len(ids))
    if previous:
        index.meta.version = previous.version
    index.meta.generation = secrets.randbits(62)  # never one a reader already holds
    index.meta.journal_seq = index.meta.journal_floor = head or 0
    for chunk, vectors in stored_chunks(ref, ids):
        index.add(chunk, np.stack(vectors), index_hashes(ref.name, chunk))
    background_save_taken(ref, None, wait=True)  # its files are of the index replaced here
    with snapshot_lock(directory):
        index.save(directory)
    IndexChange.objects.filter(model_name=ref.name, id__lte=head or 0).delete()
    _writer_cache[str(directory)] = index
    return len(ids)


def index_reconcile() -> dict[str, int]:
    """Make every served index hold exactly the searchable items that have its vector: adds
    what a lost task left out (an approval whose update never arrived), takes out what should
    not be there. Runs on the index queue (the single writer), from the beat, on a window of
    ids at a time: comparing a million items took 6-19 s of the writer, which uploads waited
    for; a window of 100,000 ids takes a tenth, and the gallery is covered every ten runs."""
    added = removed = 0
    for ref in served_models(active_model(fresh=True)):
        with _writing(ref):
            index = _writer_index(ref)
            if index is None:
                _index_build_locked(ref)
                continue
            start, end = _reconcile_windows.next(ref.name)
            held = index.labels(between=(start, end))
            wanted = set(
                Image.objects.searchable()
                .with_vector(ref.name)
                .filter(pk__gte=start, pk__lt=end)
                .values_list("pk", flat=True)
            )
            ids = sorted(wanted - held)
            unwanted = held - wanted  # on their way in (processing) stay
            staying = Image.objects.filter(pk__in=list(unwanted)).indexable().values_list("pk", flat=True)
            extra = sorted(unwanted - set(staying))
            new, gone = _journal_write(ref, index, add=ids, remove=extra)
            if new or gone:
                logger.warning("index %s reconciled: %d added, %d removed", ref.name, new, gone)
            if isinstance(index, PgVectorIndex):
                index_compact_step(ref, index)  # a step of the move to compact vectors, when due
            elif isinstance(index, VectorIndex) and compact_due(ref, index.meta):
                logger.warning(
                    "index %s built again for its compact vectors (%d items)", ref.name, len(index)
                )
                _index_build_locked(ref)
                continue
            # Quiet times write the snapshot the last changes have not yet earned.
            snapshot_if_due(ref, index)
            added, removed = max(added, new), max(removed, gone)
    return {"added": added, "removed": removed}


def index_request_rebuild(directory: Path) -> None:
    """A reader found no usable index in `directory`: when the gallery has searchable items,
    ask the writer, which rebuilds from the database an index it cannot load (readers keep
    answering from the version they hold meanwhile)."""
    some = Image.objects.searchable().values_list("pk", flat=True).first()
    if some is None:
        return
    try:
        dispatch.index_sync([some])  # with an id: the writer looks at its index, and rebuilds it
    except Exception:  # the broker is down: recovery finds the work again
        logger.exception("could not ask for an index rebuild of %s", directory)
