"""The index's snapshots (hnswlib): when one is due, written here or by a forked child
(`index.background_save`), and what the writer does once a child wrote one. Called by the
index writer with the index's write lock held."""

import logging
import time

from django.conf import settings

from ..embedders import ModelRef
from ..index import IndexMeta, IndexWriteFailed, VectorIndex, background_save, snapshot_lock
from ..index.pgvector import PgVectorIndex
from ..models import IndexChange
from ..selectors.search import SearchIndex

logger = logging.getLogger(__name__)


def background_save_taken(ref: ModelRef, index: VectorIndex | None, *, wait: bool = False) -> None:
    """A background snapshot that ended: the writer's index takes its bookkeeping and the
    journal before the previous snapshot is pruned, as after a save in this process."""
    done = background_save.finished(ref.index_dir, wait=wait)
    if done is None or not done[1]:
        return
    save = done[0]
    on_disk = IndexMeta.read(ref.index_dir)
    if index is not None and on_disk is not None and on_disk.version == save.version:
        index.adopt_snapshot(ref.index_dir, on_disk, save.full_at_fork)
    IndexChange.objects.filter(model_name=ref.name, id__lte=save.journal_floor).delete()


def snapshot_if_due(ref: ModelRef, index: SearchIndex, *, force: bool = False, by_age: bool = True) -> bool:
    """Save a snapshot when the journal since the last one holds more than a few percent of the
    index (or, with `by_age`, any change once the snapshot is older than INDEX_SNAPSHOT_SECONDS),
    so that a process that starts has little to replay; then prune the journal before the
    previous snapshot (a reader still there loads the new snapshot). The database's index has
    none. An upload's sync does not save by age (the periodic reconcile does): below
    INDEX_SNAPSHOT_BACKGROUND_MIN_ITEMS the save runs here, and the upload would wait for it."""
    if isinstance(index, PgVectorIndex):
        return False
    if background_save.in_flight(ref.index_dir):
        if not force:
            return False  # the next one once it is written
        background_save_taken(ref, index, wait=True)
    on_disk = IndexMeta.read(ref.index_dir)
    since = on_disk.journal_seq if on_disk else 0
    if index.meta.journal_seq <= since and not force:
        return False
    changes = IndexChange.objects.filter(
        model_name=ref.name, id__gt=since, id__lte=index.meta.journal_seq
    ).count()
    age = time.time() - (ref.index_dir / "meta.json").stat().st_mtime if on_disk else float("inf")
    due = changes >= max(settings.INDEX_SNAPSHOT_CHANGES, len(index) * settings.INDEX_SNAPSHOT_FRACTION)
    if not (force or due or (by_age and changes and age >= settings.INDEX_SNAPSHOT_SECONDS)):
        return False
    index.meta.journal_floor = since
    if (
        isinstance(index, VectorIndex)
        and not force
        and len(index) >= settings.INDEX_SNAPSHOT_BACKGROUND_MIN_ITEMS
    ):
        background_save.start(index, ref.index_dir)  # taken (and the journal pruned) once written
        return True
    try:
        with snapshot_lock(ref.index_dir):
            index.save(ref.index_dir)
    except IndexWriteFailed as exc:  # e.g. a full disk: the journal keeps every change meanwhile
        logger.error("index snapshot of %s not written, trying again later: %s", ref.name, exc)
        return False
    IndexChange.objects.filter(model_name=ref.name, id__lte=since).delete()
    return True
