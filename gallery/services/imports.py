"""Bulk imports (the admin's import page and `import_images`): a source is listed into an
ImportJob of ImportItems, stored through the one upload path batch by batch, and embedded."""

import os
import uuid
import zipfile
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.utils import timezone

from .. import importing
from ..imaging import ImageRejected
from ..models import Image, ImportItem, ImportJob
from . import dispatch
from .embedding import images_embed
from .inputs import acting_user, clean_tags, clean_text
from .uploads import image_create


def import_limits() -> importing.Limits:
    return importing.Limits(
        max_file_bytes=settings.UPLOAD_MAX_BYTES,
        max_total_bytes=settings.IMPORT_MAX_TOTAL_BYTES,
        max_ratio=settings.IMPORT_MAX_COMPRESSION_RATIO,
    )


def import_job_create(
    *, kind: str, path: str | Path, category: str = "", started_by: Any = None
) -> ImportJob:
    """List the source's entries into a job (one ImportItem per file, refused ones already
    failed with their reason). Raises `importing.SourceError` when the source is unusable."""
    entries = importing.list_entries(kind, path, category=clean_text(category, 100), limits=import_limits())
    with transaction.atomic():
        job = ImportJob.objects.create(
            source_kind=kind,
            source_path=str(path),
            category=clean_text(category, 100),
            total=len(entries),
            started_by=acting_user(started_by),
        )
        ImportItem.objects.bulk_create(
            [
                ImportItem(
                    job=job,
                    position=position,
                    path=entry.path[:1000],
                    title=clean_text(entry.title, 200),
                    category=clean_text(entry.category, 100),
                    tags=clean_tags(entry.tags),
                    external_id=clean_text(entry.external_id, 200),
                    state=ImportItem.State.FAILED if entry.error else ImportItem.State.PENDING,
                    error=entry.error,
                )
                for position, entry in enumerate(entries)
            ],
            batch_size=2000,
        )
    return job


def import_job_start(job: ImportJob) -> None:
    """Queue the job's pending items as batch tasks (after the commit). Also resumes a job
    whose tasks were lost: items already done are never done again."""
    pending = list(job.items.filter(state=ImportItem.State.PENDING).values_list("pk", flat=True))
    if not pending:
        import_job_finish_if_done(job.pk)
        return
    ImportJob.objects.filter(pk=job.pk).update(updated_at=timezone.now())
    dispatch.import_batches(job.pk, pending)


def import_jobs_resume_all() -> int:
    """Queue again every active job's pending items (a worker start after lost tasks)."""
    jobs = list(ImportJob.objects.filter(state__in=[ImportJob.State.QUEUED, ImportJob.State.RUNNING]))
    for job in jobs:
        import_job_start(job)
    return len(jobs)


def import_job_cancel(job: ImportJob) -> bool:
    return bool(
        ImportJob.objects.filter(
            pk=job.pk, state__in=[ImportJob.State.QUEUED, ImportJob.State.RUNNING]
        ).update(state=ImportJob.State.CANCELLED, finished_at=timezone.now())
    )


def import_job_process(job_id: int, item_ids: list[int], *, embed: bool = True) -> int:
    """Store a batch of a job's pending items through the one upload path, then embed the new
    images in one batch (or queue them). Idempotent: done items are skipped, and a retried
    batch embeds whatever of it is still waiting."""
    job = ImportJob.objects.select_related("started_by").get(pk=job_id)
    if not job.is_active:
        return 0
    if job.state == ImportJob.State.QUEUED:
        ImportJob.objects.filter(pk=job.pk, state=ImportJob.State.QUEUED).update(
            state=ImportJob.State.RUNNING, started_at=timezone.now()
        )
    items = list(job.items.filter(pk__in=item_ids, state=ImportItem.State.PENDING))
    try:
        reader = importing.SourceReader(job.source_kind, job.source_path).__enter__()
    except (OSError, zipfile.BadZipFile) as exc:
        ImportJob.objects.filter(pk=job.pk).update(
            state=ImportJob.State.FAILED,
            error=f"The source cannot be read: {exc}",
            finished_at=timezone.now(),
        )
        return 0
    try:
        for item in items:
            _import_item_store(job, item, reader)
    finally:
        reader.__exit__(None, None, None)
    waiting = list(
        Image.objects.filter(
            pk__in=ImportItem.objects.filter(pk__in=item_ids, state=ImportItem.State.IMPORTED).values(
                "image_id"
            )
        )
        .processing()
        .values_list("pk", flat=True)
    )
    if waiting:
        if embed:
            images_embed(waiting, bulk=True)
        else:
            dispatch.images_embed(waiting, bulk=True)
    ImportJob.objects.filter(pk=job.pk).update(updated_at=timezone.now())
    import_job_finish_if_done(job.pk)
    return len(items)


def _import_item_store(job: ImportJob, item: ImportItem, reader: importing.SourceReader) -> None:
    """One file through `image_create`; a bad file fails its item with the reason, never the job."""
    try:
        data = reader.read(item.path, settings.UPLOAD_MAX_BYTES)
        with transaction.atomic():  # the image and its item's state commit together
            image, created = image_create(
                data=data,
                title=item.title,
                category=item.category,
                original_name=item.path,
                tags=item.tags,
                external_id=item.external_id,
                uploaded_by=job.started_by,
                trusted=True,
                enqueue=False,
            )
            state = ImportItem.State.IMPORTED if created else ImportItem.State.DUPLICATE
            _import_item_done(item, state, image=image)
    except ImageRejected as exc:
        _import_item_done(item, ImportItem.State.FAILED, error=str(exc))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, RuntimeError) as exc:
        _import_item_done(item, ImportItem.State.FAILED, error=f"cannot be read: {exc}")


def _import_item_done(item: ImportItem, state: str, *, image: Image | None = None, error: str = "") -> None:
    ImportItem.objects.filter(pk=item.pk, state=ImportItem.State.PENDING).update(
        state=state, error=error[:2000], image=image
    )


def import_job_finish_if_done(job_id: int) -> None:
    if not ImportItem.objects.filter(job_id=job_id, state=ImportItem.State.PENDING).exists():
        finished = ImportJob.objects.filter(
            pk=job_id, state__in=[ImportJob.State.QUEUED, ImportJob.State.RUNNING]
        ).update(state=ImportJob.State.DONE, finished_at=timezone.now())
        if finished:
            _discard_uploaded_archive(ImportJob.objects.get(pk=job_id))


def _discard_uploaded_archive(job: ImportJob) -> None:
    """A finished job's ZIP that staff uploaded (not a server folder) is deleted: every
    item is stored or refused, and the archive could be gigabytes."""
    source = Path(job.source_path).resolve()
    if source.is_relative_to(Path(settings.IMPORT_UPLOAD_DIR).resolve()) and source.suffix == ".zip":
        source.unlink(missing_ok=True)


def import_upload_store(upload: "UploadedFile[bytes]") -> Path:
    """Stream an uploaded ZIP (Django already spooled it to a temporary file in chunks) to
    IMPORT_UPLOAD_DIR under a fresh name."""
    directory = Path(settings.IMPORT_UPLOAD_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{uuid.uuid4().hex}.zip"
    with open(target, "wb") as out:
        for chunk in upload.chunks(chunk_size=4 * 1024 * 1024):
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return target


def import_root_path(relative: str) -> Path:
    """A folder, manifest or archive named by staff must lie inside IMPORT_ROOT (given
    relative to it, or as an absolute path under it)."""
    root = Path(settings.IMPORT_ROOT).resolve()
    named = Path(relative.strip())
    target = (
        named
        if named.is_absolute() and named.resolve().is_relative_to(root)
        else root / str(named).lstrip("/")
    ).resolve()
    if not target.is_relative_to(root):
        raise importing.SourceError(f"{relative} is outside the import root {root}.")
    if not target.exists():
        raise importing.SourceError(f"{relative} does not exist under the import root {root}.")
    return target
