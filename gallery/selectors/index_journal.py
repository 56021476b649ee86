"""Reading the index journal (`IndexChange`): the changes after a snapshot, with the vectors and
perceptual hashes they need read from the database (the truth), ready to apply to an index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from django.db import connections

from ..embedders import copy_model
from ..index import JournalBatch, VectorIndex
from ..models import Embedding, Image, IndexChange


def journal_read(model: str, after: int, limit: int) -> JournalBatch | None:
    """At most `limit` changes of `model`'s index after change `after`, the last change of a
    label winning; an add whose vector is gone (the image was deleted) becomes a remove."""
    rows = list(
        IndexChange.objects.filter(model_name=model, id__gt=after)
        .order_by("id")
        .values_list("id", "image_id", "op")[: limit + 1]
    )
    if not rows:
        return None
    more = len(rows) > limit
    rows = rows[:limit]
    last: dict[int, int] = {}
    for _, image_id, op in rows:
        last[image_id] = op
    wanted = [image_id for image_id, op in last.items() if op == IndexChange.Op.ADD]
    stored = dict(
        Embedding.objects.filter(model_name=model, image_id__in=wanted).values_list("image_id", "vector")
    )
    labels = [image_id for image_id in wanted if image_id in stored]
    removed = [
        image_id
        for image_id, op in last.items()
        if op == IndexChange.Op.REMOVE or (op == IndexChange.Op.ADD and image_id not in stored)
    ]
    hashes = index_hashes(model, labels)
    vectors = (
        np.stack([np.frombuffer(bytes(stored[label]), dtype=np.float32) for label in labels])
        if labels
        else np.zeros((0, 0), dtype=np.float32)
    )
    return JournalBatch(rows[-1][0], labels, vectors, hashes, removed, more)


def index_hashes(model: str, ids: list[int]) -> list[bytes | None]:
    """The items' perceptual hashes, one per id (None where an item has none), when `model`'s
    index holds them: the copy model's does; any other index gets an empty list."""
    if not ids or model != copy_model().name:
        return []
    rows = Image.objects.filter(pk__in=ids, pdq__isnull=False).values_list("pk", "pdq")
    codes = {pk: bytes(code) for pk, code in rows if code is not None}
    return [codes.get(i) for i in ids]


class DatabaseJournal:
    """The `Journal` of the app's indexes (readers and the writer replay it)."""

    def read(self, model: str, after: int, limit: int) -> JournalBatch | None:
        return journal_read(model, after, limit)

    def done(self) -> None:
        connections.close_all()  # a background thread's own connections


DATABASE_JOURNAL = DatabaseJournal()


def index_current(directory: Path) -> VectorIndex | None:
    """The index in `directory` as it is now: its snapshot with the journal after it replayed
    (a private copy loaded for this call: for commands, checks and tests, not for searches)."""
    index = VectorIndex.load(Path(directory))
    if index is not None:
        index.catch_up(DATABASE_JOURNAL)
    return index
