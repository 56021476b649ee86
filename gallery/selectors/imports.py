"""Reads of bulk imports: a job's progress and its refused files."""

from typing import Any

from django.db.models import Count
from django.utils import timezone

from ..models import Image, ImportItem, ImportJob


def import_job_progress(job: ImportJob) -> dict[str, Any]:
    """Counts derived from the items, the rate so far and the time left."""
    counts = dict(job.items.values_list("state").annotate(n=Count("pk")).values_list("state", "n"))
    imported = counts.get(ImportItem.State.IMPORTED, 0)
    duplicates = counts.get(ImportItem.State.DUPLICATE, 0)
    failed = counts.get(ImportItem.State.FAILED, 0)
    pending = counts.get(ImportItem.State.PENDING, 0)
    searchable = Image.objects.filter(
        pk__in=job.items.filter(state=ImportItem.State.IMPORTED).values("image_id"),
        status=Image.Status.INDEXED,
    ).count()
    processed = imported + duplicates + failed
    elapsed = (
        ((job.finished_at or timezone.now()) - job.started_at).total_seconds() if job.started_at else 0.0
    )
    worked = (
        processed
        - job.items.filter(
            state=ImportItem.State.FAILED, image__isnull=True, error__endswith="refused)"
        ).count()
    )
    rate = worked / elapsed if elapsed > 0 else 0.0
    return {
        "id": job.pk,
        "state": job.state,
        "total": job.total,
        "imported": imported,
        "duplicates": duplicates,
        "failed": failed,
        "pending": pending,
        "searchable": searchable,
        "percent": round(100.0 * processed / job.total, 1) if job.total else 100.0,
        "rate": round(rate, 2),
        "seconds_left": round(pending / rate) if rate > 0 and pending else (0 if not pending else None),
        "error": job.error,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


def import_job_failures(job: ImportJob, limit: int = 500) -> list[ImportItem]:
    """The refused files with their reasons, in source order."""
    return list(job.items.filter(state=ImportItem.State.FAILED)[:limit])


def import_job_pending_item_ids(job: ImportJob) -> list[int]:
    return list(job.items.filter(state=ImportItem.State.PENDING).values_list("pk", flat=True))


def import_job_image_ids(job: ImportJob) -> list[int]:
    """The images a job stored or found already present."""
    return list(
        job.items.filter(state__in=[ImportItem.State.IMPORTED, ImportItem.State.DUPLICATE]).values_list(
            "image_id", flat=True
        )
    )
