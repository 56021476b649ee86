"""Compact vectors (`index.compact`): the rule of when an index holds them, the projection a
fresh index learns, and a served model's move to them in PostgreSQL (`VECTOR_BACKEND=pgvector`).

hnswlib moves by building the index again in the background (`index_writer.index_reconcile`).
In PostgreSQL a million rows and their HNSW index cannot be written again in one go while
the model serves, so the move is made in steps (`pgvector_projection`): the writer learns
the projection and stores it pending (every row written from then on has its compact vector);
each later reconcile gives a window of the rows written before theirs; when none lacks one,
the compact HNSW index is built beside the full one on the train queue (CONCURRENTLY: uploads
go on), and only then do searches switch to it. A model version loaded in bulk before its
switch gets its projection at once (`index_writer.index_build`)."""

from __future__ import annotations

import logging
import random

from django.conf import settings

from ..embedders import ModelRef, active_model, served_models
from ..index import IndexMeta
from ..index.compact import LEARN_SAMPLE, Projection
from ..index.pgvector import PgVectorIndex
from ..selectors.catalogue import stored_chunks
from ..selectors.search import pgvector_index
from . import dispatch

logger = logging.getLogger(__name__)

FILL_WINDOW = 20_000  # rows given their compact vector per reconcile run
_filled_up_to: dict[str, int] = {}  # by model: the last id a window reached


def compact_dims(ref: ModelRef, items: int) -> int:
    """How many numbers an index of `items` of `ref`'s vectors holds each projected to (0: the
    full vectors): the rule of `INDEX_COMPACT_DIMS` and `INDEX_COMPACT_MIN_ITEMS`. One vector
    per item, longer than the projection, and not a hash model's (its signs are its codes)."""
    dims = int(settings.INDEX_COMPACT_DIMS)
    eligible = dims > 0 and ref.views == 1 and not ref.bits and ref.dim > dims
    return dims if eligible and items >= settings.INDEX_COMPACT_MIN_ITEMS else 0


def compact_due(ref: ModelRef, meta: IndexMeta) -> bool:
    """An hnswlib index should be built again to become compact (it grew past the threshold),
    to learn its projection again (the gallery doubled since), or to give it up (the setting
    changed)."""
    if not meta.compact_dims:
        return bool(compact_dims(ref, meta.count))
    if compact_dims(ref, settings.INDEX_COMPACT_MIN_ITEMS) != meta.compact_dims:
        return True
    return meta.count >= 2 * max(1, meta.compact_learned_on)


def projection_for(ref: ModelRef, ids: list[int]) -> Projection | None:
    """The compact vectors' projection a fresh index of these items holds, learned on a
    sample of their stored vectors (None: the full vectors, `compact_dims`)."""
    dims = compact_dims(ref, len(ids))
    if not dims:
        return None
    sample = sorted(random.Random(len(ids)).sample(ids, min(len(ids), LEARN_SAMPLE)))
    return Projection.learn([v for _, rows in stored_chunks(ref, sample) for v in rows], dims)


def index_compact_step(ref: ModelRef, index: PgVectorIndex) -> str:
    """One step of a served model's move to compact vectors in PostgreSQL, under the writer's
    lock; what it did: `full` (not due), `started`, `filling`, `building` (the build was asked
    for) or `compact` (done)."""
    if index.projection is not None:
        return "compact"
    pending = index.pending_projection()
    if pending is None:
        if not compact_dims(ref, len(index)):
            return "full"
        ids = sorted(index.labels())
        projection = projection_for(ref, ids)
        if projection is None:
            return "full"
        index.compact_start(projection)
        _filled_up_to[ref.name] = 0
        logger.warning("index %s moves to compact vectors (%d numbers)", ref.name, projection.dims)
        return "started"
    after = _filled_up_to.get(ref.name, 0)
    lacking = index.lacking_compact(after, FILL_WINDOW)
    if not lacking and after:  # the end reached: once more from the start, to be sure
        _filled_up_to[ref.name] = 0
        return "filling"
    if not lacking:
        dispatch.index_compact_finish(ref.name)
        return "building"
    found: dict[int, object] = {}
    for chunk, vectors in stored_chunks(ref, lacking):
        index.put_compact(list(zip(chunk, vectors)))
        found.update(dict.fromkeys(chunk))
    # Rows whose stored embedding is gone (replaced meanwhile) are projected from the row.
    rows = [(label, v) for label in lacking if label not in found and (v := index.vector(label)) is not None]
    index.put_compact(rows)
    _filled_up_to[ref.name] = lacking[-1]
    return "filling"


def index_compact_finish(model_name: str) -> bool:
    """The last step: the compact HNSW index built beside the full one, then searched
    (`PgVectorIndex.compact_finish`). Long at a million items: on the train queue, without
    the writer's lock (writes go on; every row written has its compact vector)."""
    ref = next((r for r in served_models(active_model(fresh=True)) if r.name == model_name), None)
    if ref is None:
        return False
    done = pgvector_index(ref).compact_finish()
    if done:
        logger.warning("index %s searches its compact vectors", model_name)
    return done
