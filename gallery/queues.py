"""Celery queue names and which task runs on which: read by settings (routes), `runapp`
(one worker per queue), the dispatcher and recovery. Plain constants: importable anywhere,
Django settings included."""

from typing import Final

EMBED: Final = "embed"  # storing and embedding uploads and imports (the beat runs beside it)
INDEX: Final = "index"  # the single index writer: one process
TRAIN: Final = "train"  # long runs (training, evaluation, re-embedding for a new model)

ALL: Final = (EMBED, INDEX, TRAIN)

TASK_MODULE: Final = "gallery.tasks"

# Task name (as in gallery/tasks.py, named like the service it runs) -> its queue,
# in pipeline order.
TASK_QUEUES: Final[dict[str, str]] = {
    "import_job_process": EMBED,
    "images_embed": EMBED,
    "images_backfill": EMBED,
    "index_sync": INDEX,
    "index_remove": INDEX,
    "index_reconcile": INDEX,
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
    INDEX: (6 * 3600, 6 * 3600 + 300),
    TRAIN: None,
}


def task_path(task: str) -> str:
    """The registered Celery name of one of our tasks."""
    return f"{TASK_MODULE}.{task}"


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
