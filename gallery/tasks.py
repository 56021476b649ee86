"""Thin Celery tasks: take ids, call services, retry with back-off. Late acknowledgement
with reject-on-worker-lost; `images_embed` counts attempts in the database so a task that
keeps killing its worker still ends, with the error recorded on the image."""

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings

from . import services


@shared_task(bind=True, acks_late=True, max_retries=None)
def embed_images(self, image_ids: list[int]):
    try:
        return services.images_embed(image_ids)
    except Exception as exc:
        services.images_record_error(image_ids, f"Embedding failed: {exc}")
        if self.request.retries + 1 >= settings.EMBED_MAX_ATTEMPTS:
            services.images_mark_failed(
                image_ids, f"Gave up after {settings.EMBED_MAX_ATTEMPTS} attempts: {exc}"
            )
            return 0
        raise self.retry(exc=exc, countdown=min(60, 2 ** (self.request.retries + 1))) from exc


@shared_task(bind=True, acks_late=True, max_retries=5)
def index_sync(self, image_ids: list[int] | None = None):
    try:
        return services.index_sync(image_ids)
    except Exception as exc:
        raise self.retry(exc=exc, countdown=min(60, 2 ** (self.request.retries + 1))) from exc


@shared_task(bind=True, acks_late=True, max_retries=5)
def index_remove(self, image_ids: list[int]):
    try:
        return services.index_remove(image_ids)
    except Exception as exc:
        raise self.retry(exc=exc, countdown=min(60, 2 ** (self.request.retries + 1))) from exc


@shared_task
def recover_lost_work():
    return services.recover_lost_work()


@worker_ready.connect
def _queue_pending_work(sender=None, **kwargs):
    """When an embedding worker starts, pick up images and import jobs whose tasks were lost
    (a broker outage, a killed worker)."""
    task_consumer = getattr(sender, "task_consumer", None)  # the sender is the worker's Consumer
    queues = {q.name for q in task_consumer.queues} if task_consumer else set()
    if "embed" in queues:
        services.images_enqueue_pending()
        services.import_jobs_resume_all()
    if "train" in queues:
        services.models_resume_stalled(stale_after_seconds=0)


@shared_task(bind=True, acks_late=True, max_retries=5)
def import_batch(self, job_id: int, item_ids: list[int]):
    try:
        return services.import_job_process(job_id, item_ids, embed=True)
    except Exception as exc:
        raise self.retry(exc=exc, countdown=min(60, 2 ** (self.request.retries + 1))) from exc


@shared_task(acks_late=True)
def train_model(version_id: int):
    """Long: runs on the `train` queue. Resumes from the last checkpoint when re-delivered."""
    return services.model_train(version_id).state


@shared_task(acks_late=True)
def evaluate_model(version_id: int, protocol: str, data: str, limits: dict | None = None):
    return services.model_evaluate(version_id, protocol, data, limits=limits)


@shared_task(acks_late=True)
def activate_model(version_id: int):
    return services.model_activate(version_id).activation
