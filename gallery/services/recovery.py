"""Lost work found again: tasks lost with a broker restart or a killed worker, and images
that lack the active model's vector. Run by a starting worker and by the beat's safety net;
duplicate tasks are harmless, because every task re-checks what is still to do."""

from collections.abc import Collection
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from .. import queues
from ..embedders import active_model, served_models
from ..models import Image, ImportJob, ModelVersion
from ..selectors.operations import queue_depth
from . import dispatch
from .imports import import_job_start, import_jobs_resume_all


def queue_has_work(queue: str, broker_url: str | None = None) -> bool:
    """Messages waiting in a broker queue (True when the broker cannot be asked)."""
    try:
        return queue_depth(queue, broker_url) > 0
    except Exception:
        return True


def embedding_has_work() -> bool:
    """Messages waiting for the embedding worker's vectors and hashes (not the features
    kept after them: an import does not wait on those)."""
    return any(queue_has_work(queue) for queue in (queues.EMBED, queues.EMBED_BULK))


def images_enqueue_pending() -> int:
    """Queue every image still waiting for its vectors or hash (after a broker outage or
    restart, or the whole gallery after a model switch), and an index update when some have
    all they need: bulk work, behind what a visitor waits on."""
    names = [ref.name for ref in served_models()]
    ids = list(Image.objects.processing().lacking(names).values_list("pk", flat=True))
    if ids:
        dispatch.images_embed(ids, bulk=True)
    if Image.objects.processing().complete(names).exists():
        dispatch.index_sync(bulk=True)
    return len(ids)


def images_catch_up_with_served_models() -> None:
    """Images that lack a vector of a served model get it: those marked indexed (with another
    model's: a switch, or a changed default embedder such as `EMBEDDER_GALLERY_VIEWS`) go
    back to processing, and every such processing image is queued. One UPDATE: an upgrade
    may send every image of a large gallery back."""
    names = [ref.name for ref in served_models(active_model(fresh=True))]
    Image.objects.filter(status=Image.Status.INDEXED).lacking_vectors(names).update(
        status=Image.Status.PROCESSING, embed_attempts=0
    )
    images_enqueue_pending()


def import_job_resume_stalled(job: ImportJob) -> bool:
    """An active job lost its tasks (a Redis or worker restart) when nothing waits in the
    embed queue and none of its batches finished for IMPORT_STALL_SECONDS: queue its pending
    items again. A job merely waiting behind other work is left alone."""
    stalled_since = timezone.now() - timedelta(seconds=settings.IMPORT_STALL_SECONDS)
    if job.is_active and job.updated_at < stalled_since and not embedding_has_work():
        import_job_start(job)
        return True
    return False


def models_resume_stalled(stale_after_seconds: int = 300) -> int:
    """Training and activation runs whose worker died: queued again (they resume)."""
    if queue_has_work(queues.TRAIN):
        return 0
    cutoff = timezone.now() - timedelta(seconds=stale_after_seconds)
    stalled = ModelVersion.objects.filter(updated_at__lt=cutoff)
    count = 0
    for version in stalled.filter(state__in=[ModelVersion.State.QUEUED, ModelVersion.State.TRAINING]):
        ModelVersion.objects.filter(pk=version.pk).update(updated_at=timezone.now())
        dispatch.model_train(version.pk)
        count += 1
    for version in stalled.filter(activation=ModelVersion.Activation.ACTIVATING):
        ModelVersion.objects.filter(pk=version.pk).update(updated_at=timezone.now())
        dispatch.model_activate(version.pk)
        count += 1
    return count


def recover_lost_work(stale_after_seconds: int = 600, lost_after_seconds: int = 20) -> dict[str, Any]:
    """Periodic safety net (Celery beat, every 30 s): resume import jobs that stopped moving
    and queue again images still waiting for an embedding whose task is gone (lost with a
    Redis restart or a killed worker). With nothing waiting in the embed queue, an image that
    has waited `lost_after_seconds` has no task left; behind a long queue only after
    `stale_after_seconds`. A task that was only running is harmless to repeat."""
    resumed = sum(
        import_job_resume_stalled(job)
        for job in ImportJob.objects.filter(state__in=[ImportJob.State.QUEUED, ImportJob.State.RUNNING])
    )
    names = [ref.name for ref in served_models()]
    waited = stale_after_seconds if embedding_has_work() else lost_after_seconds
    cutoff = timezone.now() - timedelta(seconds=waited)
    stale = list(
        Image.objects.processing().filter(updated_at__lt=cutoff).lacking(names).values_list("pk", flat=True)
    )
    if stale:
        Image.objects.filter(pk__in=stale).update(updated_at=timezone.now())
        dispatch.images_embed(stale, bulk=True)
    if Image.objects.processing().complete(names).filter(updated_at__lt=cutoff).exists():
        dispatch.index_sync(bulk=True)
    return {"jobs": resumed, "images": len(stale), "models": models_resume_stalled()}


def worker_started(consumed: Collection[str]) -> None:
    """A worker came up consuming these queues: pick up what lost tasks left behind."""
    if queues.EMBED in consumed:
        images_catch_up_with_served_models()  # also queues every image still waiting
        import_jobs_resume_all()
    if queues.TRAIN in consumed:
        models_resume_stalled(stale_after_seconds=0)
