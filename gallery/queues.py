"""Celery queue names and which task runs on which: read by settings (routes), `runapp`
(one worker per group of queues), the dispatcher and recovery. Plain constants: importable
anywhere, Django settings included.

The embedding and the index worker each take two queues: the one a visitor waits on (an
upload, a moderation decision) and a bulk one (import batches, backfill, recovery), in that
order with the broker's `queue_order_strategy` "priority" (settings): an upload sent while an
import of 10,000 photos is queued is taken next, not after the import. The embedding worker
takes a third queue last, `embed_later`: work no one waits on (each photo's local features)."""

from typing import Final

EMBED: Final = "embed"  # storing and embedding what a visitor waits on (the beat runs beside it)
EMBED_BULK: Final = "embed_bulk"  # import batches, re-embedding, backfill: after `embed`
# What makes searches faster and none waits on (each stored photo's local features): taken
# only while `embed` and `embed_bulk` are empty, so an import is searchable as soon as before.
EMBED_LATER: Final = "embed_later"
INDEX: Final = "index"  # the single index writer: one process
INDEX_BULK: Final = "index_bulk"  # imports' index updates and the reconcile: after `index`
TRAIN: Final = "train"  # long runs (training, evaluation, re-embedding for a new model)

# Each worker's queues, the visitor's first (`celery worker -Q`).
EMBED_WORKER: Final = (EMBED, EMBED_BULK, EMBED_LATER)
INDEX_WORKER: Final = (INDEX, INDEX_BULK)
TRAIN_WORKER: Final = (TRAIN,)
# One worker that takes every queue (the tests'): a visitor's work first, then index updates
# (quick, and they make an import's batches searchable as they come), then bulk embedding.
ALL: Final = (EMBED, INDEX, INDEX_BULK, EMBED_BULK, EMBED_LATER, TRAIN)
BULK_OF: Final[dict[str, str]] = {EMBED: EMBED_BULK, INDEX: INDEX_BULK}

TASK_MODULE: Final = "gallery.tasks"

# Task name (as in gallery/tasks.py, named like the service it runs) -> its queue,
# in pipeline order; `queue_of(task, bulk=True)` for the bulk one of the same worker.
TASK_QUEUES: Final[dict[str, str]] = {
    "import_job_process": EMBED_BULK,
    "images_embed": EMBED,
    "images_backfill": EMBED_BULK,
    "item_features_store": EMBED_LATER,
    "index_sync": INDEX,
    "index_remove": INDEX,
    "index_reconcile": INDEX_BULK,  # seconds at a million items: never ahead of an upload
    "index_compact_finish": TRAIN,  # an HNSW index built over a million rows: minutes
    "recover_lost_work": EMBED,
    "model_train": TRAIN,
    "model_evaluate": TRAIN,
    "model_activate": TRAIN,
    "duplicate_scan_run": TRAIN,  # minutes at a large gallery: not on the web-facing queues
}


# Time limits by queue (soft, hard), in seconds: work the web waits on is short and must never
# hang its worker; an index rebuild takes hours at a million items, and training, evaluation
# and activation take what they take (they save checkpoints and resume). Celery applies
# them per task; there is no global limit that could kill a long run.
TIME_LIMITS: Final[dict[str, tuple[int, int] | None]] = {
    EMBED: (300, 360),
    EMBED_BULK: (300, 360),
    EMBED_LATER: (300, 360),
    INDEX: (6 * 3600, 6 * 3600 + 300),
    INDEX_BULK: (6 * 3600, 6 * 3600 + 300),
    TRAIN: None,
}


def task_path(task: str) -> str:
    """The registered Celery name of one of our tasks."""
    return f"{TASK_MODULE}.{task}"


def queue_of(task: str, *, bulk: bool = False) -> str:
    """The queue a task is sent to: its own, or with `bulk` its worker's bulk queue."""
    queue = TASK_QUEUES[task]
    return BULK_OF.get(queue, queue) if bulk else queue


def celery_routes() -> dict[str, dict[str, str]]:
    return {task_path(task): {"queue": queue} for task, queue in TASK_QUEUES.items()}


def celery_annotations() -> dict[str, dict[str, int]]:
    """Each task's time limits, from its queue's (Celery's `task_annotations`)."""
    annotations = {}
    for task, queue in TASK_QUEUES.items():
        limits = TIME_LIMITS[queue]
        if limits is not None:
            annotations[task_path(task)] = {"soft_time_limit": limits[0], "time_limit": limits[1]}
    return annotations
