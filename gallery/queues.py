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
    "recover_lost_work": EMBED,
    "model_train": TRAIN,
    "model_evaluate": TRAIN,
    "model_activate": TRAIN,
}


def task_path(task: str) -> str:
    """The registered Celery name of one of our tasks."""
    return f"{TASK_MODULE}.{task}"


def celery_routes() -> dict[str, dict[str, str]]:
    return {task_path(task): {"queue": queue} for task, queue in TASK_QUEUES.items()}
