"""The one door to Celery: every task the services queue, in pipeline order.

Each function queues after the current transaction commits (at once outside one), so a
worker never looks for rows that are not there yet, and passes ids only. Tasks are sent by
name (`queues.TASK_QUEUES`), so the services never import the task module, which imports
them. `bulk=True` sends to the worker's bulk queue, taken after what a visitor waits on."""

from collections.abc import Sequence

from celery import current_app
from django.conf import settings
from django.db import transaction

from .. import queues


def _send(task: str, *args: object, bulk: bool = False, countdown: float | None = None) -> None:
    current_app.send_task(
        queues.task_path(task), args=list(args), queue=queues.queue_of(task, bulk=bulk), countdown=countdown
    )


def _after_commit(task: str, *args: object, bulk: bool = False, countdown: float | None = None) -> None:
    transaction.on_commit(lambda: _send(task, *args, bulk=bulk, countdown=countdown), robust=True)


def import_batches(job_id: int, item_ids: Sequence[int]) -> None:
    """A job's pending items, in batches of EMBED_BATCH_SIZE: each is stored and embedded."""
    size = settings.EMBED_BATCH_SIZE
    batches = [list(item_ids[start : start + size]) for start in range(0, len(item_ids), size)]

    def send() -> None:
        for batch in batches:
            _send("import_job_process", job_id, batch)

    transaction.on_commit(send, robust=True)


def images_embed(image_ids: Sequence[int], *, bulk: bool = False) -> None:
    """Embedding, in batches of EMBED_BATCH_SIZE; `bulk`: no visitor waits on them (their
    index update is bulk too)."""
    size = settings.EMBED_BATCH_SIZE
    for start in range(0, len(image_ids), size):
        _after_commit("images_embed", list(image_ids[start : start + size]), bulk, bulk=bulk)


def item_features_store(image_ids: Sequence[int], *, countdown: float | None = None) -> None:
    """The photos' local features, kept for searches once nothing else waits (unless the
    settings keep none); `countdown`: not before so many seconds."""
    if image_ids and settings.ITEM_FEATURES_KEPT:
        _after_commit("item_features_store", list(image_ids), countdown=countdown)


def index_sync(
    image_ids: Sequence[int] | None = None, *, note_copies: Sequence[int] | None = None, bulk: bool = False
) -> None:
    """An index update: every embedded image still waiting, plus `image_ids`; then the note of
    which item each of `note_copies` copies."""
    _after_commit(
        "index_sync",
        list(image_ids) if image_ids is not None else None,
        list(note_copies) if note_copies else None,
        bulk=bulk,
    )


def index_remove(image_ids: Sequence[int]) -> None:
    _after_commit("index_remove", list(image_ids))


def index_compact_finish(model_name: str) -> None:
    _after_commit("index_compact_finish", model_name)


def model_train(version_id: int) -> None:
    _after_commit("model_train", version_id)


def model_evaluate(version_id: int, protocol: str, data: str, limits: dict[str, int] | None = None) -> None:
    _after_commit("model_evaluate", version_id, protocol, data, limits)


def model_activate(version_id: int) -> None:
    _after_commit("model_activate", version_id)


def duplicate_scan_run(scan_id: int) -> None:
    _after_commit("duplicate_scan_run", scan_id)
