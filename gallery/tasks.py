"""Thin Celery tasks, each named like the service it runs: they take ids and call it.
Acknowledgement is late with reject-on-worker-lost (settings); pipeline tasks retry with
Celery's exponential back-off and jitter. `images_embed` also counts attempts in the
database, so a task that keeps killing its worker still ends, with the error recorded."""

import os
import threading
from typing import Any

from celery import Celery, Task, current_app, shared_task
from celery.signals import worker_init, worker_process_init, worker_ready
from django.conf import settings

from . import queues, services


class PipelineTask(Task):
    """Retried on any error: 2, 4, 8, ... seconds (at most 60), with jitter."""

    autoretry_for = (Exception,)
    retry_backoff = 2
    retry_backoff_max = 60
    retry_jitter = True
    max_retries = 5


class EmbedTask(PipelineTask):
    """Each failed try is recorded on the images; after the last one they are failed."""

    max_retries = settings.EMBED_MAX_ATTEMPTS - 1

    def on_retry(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        services.images_record_error(args[0], "Embedding failed; trying again", exc)

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        services.images_mark_failed(args[0], f"Gave up after {settings.EMBED_MAX_ATTEMPTS} attempts", exc)


@shared_task(base=PipelineTask)
def import_job_process(job_id: int, item_ids: list[int]) -> int:
    return services.import_job_process(job_id, item_ids, embed=True)


@shared_task(base=EmbedTask)
def images_embed(image_ids: list[int], bulk: bool = False) -> int:
    return services.images_embed(image_ids, bulk=bulk)


@shared_task(base=PipelineTask)
def item_features_store(image_ids: list[int]) -> int:
    return services.item_features_store(image_ids)


@shared_task
def images_backfill() -> int:
    return services.images_backfill()


@shared_task(base=PipelineTask)
def index_sync(image_ids: list[int] | None = None, note_copies: list[int] | None = None) -> int:
    return services.index_sync(image_ids, note_copies)


@shared_task(base=PipelineTask)
def index_remove(image_ids: list[int]) -> int:
    return services.index_remove(image_ids)


@shared_task
def index_reconcile() -> dict[str, int]:
    return services.index_reconcile()


@shared_task
def index_compact_finish(model_name: str) -> bool:
    """Long: runs on the train queue (a served model's compact HNSW index, built in PostgreSQL)."""
    return services.index_compact_finish(model_name)


@shared_task
def recover_lost_work() -> dict[str, Any]:
    return services.recover_lost_work()


@shared_task
def model_train(version_id: int) -> str:
    """Long: runs on the train queue. Resumes from the last checkpoint when re-delivered."""
    return str(services.model_train(version_id).state)


@shared_task
def model_evaluate(
    version_id: int, protocol: str, data: str, limits: dict[str, int] | None = None
) -> dict[str, Any]:
    return services.model_evaluate(version_id, protocol, data, limits=dict(limits or {}))


@shared_task
def model_activate(version_id: int) -> str:
    return str(services.model_activate(version_id).activation)


@shared_task
def duplicate_scan_run(scan_id: int) -> int:
    return services.duplicate_scan_run(scan_id)


@worker_ready.connect
def _pick_up_lost_work(sender: Any = None, **kwargs: Any) -> None:
    """A starting worker picks up images, import jobs and model runs whose tasks were lost
    (a broker outage, a killed worker)."""
    task_consumer = getattr(sender, "task_consumer", None)  # the sender is the worker's Consumer
    consumed = {q.name for q in task_consumer.queues} if task_consumer else set()
    services.worker_started(consumed)


@worker_process_init.connect
def _yield_to_searches(**kwargs: Any) -> None:
    """A pool process of a bulk worker runs at a lower priority (`WORKER_NICE`): an import
    keeps both cores busy, and searches, which a visitor waits on, come first."""
    if settings.WORKER_NICE:
        os.nice(settings.WORKER_NICE)


@worker_process_init.connect
def _warm_the_embedders(**kwargs: Any) -> None:
    """A pool process of an embedding worker loads the served models as it starts, in the
    background (`services.embedders_warm`): a new process (at start, or replacing one past
    its memory limit) otherwise made the next upload wait 4-6 s for the load. Not inline:
    Celery waits only a few seconds for a new pool process to report ready."""
    if queues.EMBED in _consumed_queues(current_app):
        threading.Thread(target=services.embedders_warm, name="embedders-warm", daemon=True).start()


def _consumed_queues(app: Celery) -> set[str]:
    """The queues this worker consumes (`-Q`; every declared one without it)."""
    amqp_queues = app.amqp.queues
    return set(amqp_queues.consume_from or amqp_queues)


@worker_init.connect
def _index_writer_keeps_its_index(sender: Any = None, **kwargs: Any) -> None:
    """A worker of the index queue holds the index by design (1.4 GB at a million items, and
    the full vectors' mapped pages count in its resident size): a per-child memory limit
    (`CELERY_WORKER_MAX_MEMORY_PER_CHILD`) replaced its process after every task or two, and
    each new one loaded the index again: uploads took 2-13 s to become searchable. Sent
    after the worker read its settings and queues, before it starts its pool."""
    if queues.INDEX in _consumed_queues(sender.app):
        sender.max_memory_per_child = None
