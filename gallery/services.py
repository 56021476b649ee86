"""Writes. `image_create` is the one upload path for the page, the API, the admin and the
import command; the index is only ever written through `index_sync`, `index_remove` and
`index_rebuild`, which hold the single-writer lock."""

import json
import logging
import os
import shutil
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from PIL import Image as PILImage

from . import importing
from .embedders import (
    ModelRef,
    active_model,
    embedder_identity,
    forget_active_model,
    get_embedder,
    model_ref,
    pretrained_ref,
)
from .imaging import ImageRejected, decode_image, encode_for_storage, make_thumbnail, sha256_of
from .index import IndexMeta, VectorIndex, write_lock
from .models import Embedding, Image, ImportItem, ImportJob, ModelVersion, ModerationAction, Report

log = logging.getLogger(__name__)


def _clean_text(value: str | None, max_length: int) -> str:
    return " ".join((value or "").split())[:max_length]


def image_create(
    *,
    data: bytes,
    title: str = "",
    category: str = "",
    original_name: str = "",
    tags: list[str] | None = None,
    external_id: str = "",
    uploaded_by=None,
    trusted: bool = False,
    enqueue: bool = True,
) -> tuple[Image, bool]:
    """Validate, store a re-encoded copy and a thumbnail, record the image, and (after the
    transaction commits) queue its embedding. Returns (image, created); identical bytes
    return the existing image, and a known `external_id` updates that item's metadata.
    `trusted` (staff, imports) skips pre-moderation. Raises `ImageRejected` and leaves
    nothing behind."""
    external_id = _clean_text(external_id, 200)
    if external_id:
        known = Image.objects.filter(external_id=external_id).first()
        if known:
            return _image_update_metadata(known, title=title, category=category, tags=tags), False
    decoded = decode_image(data, max_bytes=settings.UPLOAD_MAX_BYTES, max_pixels=settings.UPLOAD_MAX_PIXELS)
    digest = sha256_of(data)
    existing = Image.objects.filter(sha256=digest).first()
    if existing:
        return existing, False
    pre_moderated = (
        settings.MODERATION == "pre" and not trusted and not getattr(uploaded_by, "is_staff", False)
    )
    stored, ext = encode_for_storage(decoded.image)
    thumb = make_thumbnail(decoded.image, settings.THUMBNAIL_SIZE)
    image = Image(
        title=_clean_text(title, 200) or _clean_text(Path(original_name).stem, 200) or "Untitled",
        category=_clean_text(category, 100),
        original_name=_clean_text(Path(original_name).name, 255),
        original_format=decoded.format,
        width=decoded.width,
        height=decoded.height,
        byte_size=len(data),
        sha256=digest,
        tags=_clean_tags(tags),
        external_id=external_id or None,
        uploaded_by=uploaded_by if getattr(uploaded_by, "is_authenticated", False) else None,
        moderation=Image.Moderation.PENDING if pre_moderated else Image.Moderation.APPROVED,
    )
    try:
        with transaction.atomic():
            image.file.save(f"{digest[:40]}.{ext}", ContentFile(stored), save=False)
            image.thumbnail.save(f"{digest[:40]}.jpg", ContentFile(thumb), save=False)
            image.save()
            if enqueue:
                image_ids = [image.pk]
                transaction.on_commit(lambda: enqueue_embedding(image_ids), robust=True)
    except IntegrityError:
        _delete_files(image)  # the same bytes were uploaded concurrently: keep theirs
        return Image.objects.get(sha256=digest), False
    except BaseException:
        _delete_files(image)
        raise
    return image, True


def _clean_tags(tags) -> list[str]:
    if isinstance(tags, str):
        tags = tags.split(",")
    cleaned = [_clean_text(t, 50) for t in (tags or [])]
    return list(dict.fromkeys(t for t in cleaned if t))[:50]


def _image_update_metadata(image: Image, *, title="", category="", tags=None) -> Image:
    changed = {}
    if _clean_text(title, 200):
        changed["title"] = _clean_text(title, 200)
    if _clean_text(category, 100):
        changed["category"] = _clean_text(category, 100)
    if tags:
        changed["tags"] = _clean_tags(tags)
    if changed:
        for field, value in changed.items():
            setattr(image, field, value)
        image.save(update_fields=[*changed, "updated_at"])
    return image


def _delete_files(image: Image) -> None:
    for field in (image.file, image.thumbnail):
        if field.name:
            field.storage.delete(field.name)


def enqueue_embedding(image_ids: list[int]) -> None:
    from .tasks import embed_images

    for start in range(0, len(image_ids), settings.EMBED_BATCH_SIZE):
        embed_images.delay(image_ids[start : start + settings.EMBED_BATCH_SIZE])


def enqueue_index_sync(image_ids: list[int] | None = None) -> None:
    from .tasks import index_sync as index_sync_task

    index_sync_task.delay(image_ids)


def images_enqueue_pending() -> int:
    """Queue every image still waiting for an embedding (after a broker outage or restart)."""
    name, _ = embedder_identity()
    ids = list(
        Image.objects.filter(status=Image.Status.PROCESSING)
        .exclude(embeddings__model_name=name)
        .values_list("pk", flat=True)
    )
    if ids:
        enqueue_embedding(ids)
    if Image.objects.filter(status=Image.Status.PROCESSING, embeddings__model_name=name).exists():
        enqueue_index_sync()
    return len(ids)


def recover_lost_work(stale_after_seconds: int = 600) -> dict:
    """Periodic safety net (Celery beat): resume import jobs that stopped moving and queue
    again images that have waited too long for an embedding (tasks lost with a Redis restart).
    Duplicate tasks are harmless: every task re-checks what is still to do."""
    resumed = sum(
        import_job_resume_stalled(job)
        for job in ImportJob.objects.filter(state__in=[ImportJob.State.QUEUED, ImportJob.State.RUNNING])
    )
    name, _ = embedder_identity()
    cutoff = timezone.now() - timezone.timedelta(seconds=stale_after_seconds)
    stale = list(
        Image.objects.filter(status=Image.Status.PROCESSING, updated_at__lt=cutoff)
        .exclude(embeddings__model_name=name)
        .values_list("pk", flat=True)
    )
    if stale:
        Image.objects.filter(pk__in=stale).update(updated_at=timezone.now())
        enqueue_embedding(stale)
    if Image.objects.filter(
        status=Image.Status.PROCESSING, embeddings__model_name=name, updated_at__lt=cutoff
    ).exists():
        enqueue_index_sync()
    return {"jobs": resumed, "images": len(stale), "models": models_resume_stalled()}


def images_embed(image_ids: list[int], *, note_near_duplicates: bool = True) -> int:
    """Compute and store embeddings for the given images that still need one, then queue an
    index update. Idempotent; counts attempts so that a task that keeps crashing its worker
    gives up with the error recorded. Bulk imports skip the near-duplicate note (staff see
    near-duplicate groups instead), so the embed worker does not reload the index per batch."""
    ref = active_model(fresh=True)
    embedder = get_embedder(ref)
    Image.objects.filter(pk__in=image_ids, status=Image.Status.PROCESSING).update(
        embed_attempts=F("embed_attempts") + 1
    )
    images = list(
        Image.objects.filter(pk__in=image_ids, status=Image.Status.PROCESSING).exclude(
            embeddings__model_name=embedder.name
        )
    )
    ready, pictures = [], []
    for image in images:
        if image.embed_attempts > settings.EMBED_MAX_ATTEMPTS:
            images_mark_failed(
                [image.pk], f"Gave up after {settings.EMBED_MAX_ATTEMPTS} attempts. {image.error}".strip()
            )
            continue
        try:
            with image.file.open("rb") as fh, PILImage.open(fh) as im:
                im.draft("RGB", (2 * settings.EMBEDDER_IMAGE_SIZE,) * 2)
                pictures.append(im.convert("RGBA" if im.mode == "RGBA" else "RGB"))
            ready.append(image)
        except (OSError, ValueError) as exc:
            images_mark_failed([image.pk], f"The stored file cannot be read: {exc}")
    if ready:
        vectors = embedder.embed_gallery(pictures)
        # Copies are told by the pretrained features; a model trained to gather a whole
        # category would call every item of it a near-duplicate.
        if note_near_duplicates and ref.backbone != "learned":
            _note_near_duplicates(ready, vectors, ref)
        with transaction.atomic():
            Embedding.objects.bulk_create(
                [
                    Embedding(image=image, model_name=embedder.name, dim=embedder.dim, vector=vec.tobytes())
                    for image, vec in zip(ready, vectors)
                ],
                ignore_conflicts=True,
            )
            transaction.on_commit(enqueue_index_sync, robust=True)
    elif Image.objects.filter(
        pk__in=image_ids, status=Image.Status.PROCESSING, embeddings__model_name=embedder.name
    ).exists():
        enqueue_index_sync()  # embedded earlier, but the index update was lost
    return len(ready)


def _note_near_duplicates(images: list[Image], vectors: np.ndarray, ref: ModelRef) -> None:
    """Record the closest existing item when it is nearly identical (for staff and uploaders)."""
    from .selectors import index_reader

    index = index_reader(ref).get()
    if index is None or len(index) == 0:
        return
    for image, vector in zip(images, vectors):
        hits = [(label, score) for label, score in index.query(vector, 2) if label != image.pk]
        if hits and hits[0][1] >= settings.NEAR_DUPLICATE_THRESHOLD:
            image.near_duplicate_of_id = hits[0][0]
            Image.objects.filter(pk=image.pk).update(near_duplicate_of_id=hits[0][0])


def images_record_error(image_ids: list[int], error: str) -> None:
    Image.objects.filter(pk__in=image_ids, status=Image.Status.PROCESSING).update(error=error[:2000])


def images_mark_failed(image_ids: list[int], error: str) -> None:
    Image.objects.filter(pk__in=image_ids, status=Image.Status.PROCESSING).update(
        status=Image.Status.FAILED, error=error[:2000]
    )


MODERATION_ACTIONS = ("approve", "reject", "hide", "unhide", "dismiss")


def images_moderate(image_ids: list[int], action: str, *, actor=None, reason: str = "") -> int:
    """Approve, reject, hide, unhide or dismiss reports, logging each change. Readers
    re-check the database, so a hidden item leaves search results at once; the single
    index writer drops it right after the commit, and never re-adds it (it re-checks too)."""
    if action not in MODERATION_ACTIONS:
        raise ValueError(f"Unknown moderation action {action!r}")
    images = list(Image.objects.filter(pk__in=image_ids))
    to_index, to_remove, to_embed = [], [], []
    with transaction.atomic():
        for image in images:
            if action == "approve":
                image.moderation = Image.Moderation.APPROVED
                if image.status == Image.Status.HIDDEN:
                    image.status = Image.Status.PROCESSING
                    to_embed.append(image.pk)
                elif image.status == Image.Status.INDEXED:
                    to_index.append(image.pk)
            elif action == "reject":
                image.moderation = Image.Moderation.REJECTED
                if image.status != Image.Status.FAILED:
                    image.status = Image.Status.HIDDEN
                to_remove.append(image.pk)
            elif action == "hide":
                if image.status != Image.Status.FAILED:
                    image.status = Image.Status.HIDDEN
                to_remove.append(image.pk)
            elif action == "unhide" and image.status == Image.Status.HIDDEN:
                image.moderation = Image.Moderation.APPROVED
                image.status = Image.Status.PROCESSING
                to_embed.append(image.pk)
            image.embed_attempts = 0 if image.pk in to_embed else image.embed_attempts
            image.save(update_fields=["moderation", "status", "embed_attempts", "updated_at"])
            ModerationAction.objects.create(
                image=image, action=action, reason=reason[:500], actor=_user(actor)
            )
            if action != "unhide":
                Report.objects.filter(image=image, resolved_at__isnull=True).update(
                    resolved_at=timezone.now(), resolved_by=_user(actor)
                )
        if to_remove:
            transaction.on_commit(lambda: _enqueue_index_remove(to_remove), robust=True)
        if to_index:
            transaction.on_commit(lambda: enqueue_index_sync(to_index), robust=True)
        if to_embed:  # the stored embedding is reused: this is only an index update
            transaction.on_commit(lambda: enqueue_embedding(to_embed), robust=True)
    return len(images)


def _user(user):
    return user if getattr(user, "is_authenticated", False) else None


def report_create(image: Image, reason: str) -> Report:
    reason = _clean_text(reason, 500)
    if not reason:
        raise ValueError("Please say what is wrong with this item.")
    with transaction.atomic():
        report = Report.objects.create(image=image, reason=reason)
        ModerationAction.objects.create(image=image, action="report", reason=reason)
    return report


def _enqueue_index_remove(image_ids: list[int]) -> None:
    from .tasks import index_remove as index_remove_task

    index_remove_task.delay(image_ids)


# --- the index (single writer) ---------------------------------------------------------

_writer_cache: dict[str, VectorIndex] = {}


def _new_index(model: str, dim: int, capacity: int) -> VectorIndex:
    return VectorIndex.create(
        model,
        dim,
        capacity=max(capacity, 1024),
        m=settings.INDEX_M,
        ef_construction=settings.INDEX_EF_CONSTRUCTION,
        ef=settings.INDEX_EF_SEARCH,
    )


def _writer_index(ref: ModelRef) -> VectorIndex | None:
    """The writer's in-memory index, reloaded when another writer saved a newer version.
    Call with the write lock held."""
    directory = ref.index_dir
    key = str(directory)
    on_disk = IndexMeta.read(directory)
    cached = _writer_cache.get(key)
    if on_disk is None:
        _writer_cache.pop(key, None)
        return None
    if cached is None or cached.meta.version != on_disk.version:
        cached = VectorIndex.load(directory, ef=settings.INDEX_EF_SEARCH)
        _writer_cache[key] = cached
    if cached is None or cached.meta.model != ref.name or cached.meta.dim != ref.dim:
        return None
    return cached


def _embeddings_of(queryset, model_name: str):
    rows = Embedding.objects.filter(image__in=queryset, model_name=model_name).values_list(
        "image_id", "vector"
    )
    ids, vectors = [], []
    for image_id, vector in rows.iterator(chunk_size=2000):
        ids.append(image_id)
        vectors.append(np.frombuffer(bytes(vector), dtype=np.float32))
    return ids, vectors


def index_sync(image_ids: list[int] | None = None) -> int:
    """Add every embedded image still marked processing (and the given indexed ones, e.g.
    just approved) to the index if it may be searched, save, and mark them indexed.
    With no usable index on disk, rebuild it from the database instead."""
    ref = active_model(fresh=True)
    added = _index_sync_model(ref, image_ids)
    if active_model(fresh=True).name != ref.name:
        # The model was switched while we worked: what we just marked indexed went into the
        # old index, after the switch's own catch-up had looked.
        images_catch_up_with_active_model()
    return added


def _index_sync_model(ref: ModelRef, image_ids: list[int] | None) -> int:
    model, directory = ref.name, ref.index_dir
    waiting = Image.objects.filter(status=Image.Status.PROCESSING, embeddings__model_name=model)
    if not image_ids and IndexMeta.read(directory) is not None and not waiting.exists():
        return 0  # a duplicate update: an earlier one took everything
    _pace_large_saves(directory)
    with write_lock(directory):
        index = _writer_index(ref)
        if index is None:
            return _index_rebuild_locked(ref)
        processing = list(
            Image.objects.filter(status=Image.Status.PROCESSING, embeddings__model_name=model).values_list(
                "pk", flat=True
            )
        )
        candidates = Image.objects.filter(
            pk__in=processing + list(image_ids or []), moderation=Image.Moderation.APPROVED
        )
        candidates = candidates.filter(status__in=[Image.Status.PROCESSING, Image.Status.INDEXED])
        ids, vectors = _embeddings_of(candidates, model)
        if ids:
            index.add(ids, np.stack(vectors))
            index.save(directory)
        Image.objects.filter(pk__in=processing, status=Image.Status.PROCESSING).update(
            status=Image.Status.INDEXED, indexed_at=timezone.now(), error=""
        )
        # A hide or rejection that committed while we were adding: take it out again at once.
        gone = list(_invisible(ids))
        if gone and index.remove(gone):
            index.save(directory)
        return len(ids)


def _pace_large_saves(directory: Path) -> None:
    """Every save rewrites the whole index file and makes every web process reload it. A
    large index is saved at most every few seconds (one second per 20,000 items, at most 5):
    updates queued meanwhile are taken by the next save, so a bulk import is not slowed down
    by rewriting hundreds of megabytes for every batch."""
    meta = IndexMeta.read(directory)
    if meta is None:
        return
    interval = min(5.0, meta.count / 20000)
    last_save = (directory / "meta.json").stat().st_mtime
    wait = last_save + interval - time.time()
    if wait > 0:
        time.sleep(wait)


def _invisible(ids):
    return (
        Image.objects.filter(pk__in=ids)
        .exclude(status=Image.Status.INDEXED, moderation=Image.Moderation.APPROVED)
        .values_list("pk", flat=True)
    )


def index_remove(image_ids: list[int]) -> int:
    ref = active_model(fresh=True)
    directory = ref.index_dir
    with write_lock(directory):
        index = _writer_index(ref)
        if index is None:
            return 0
        removed = index.remove(list(_invisible(image_ids)))
        if removed:
            index.save(directory)
        return removed


def index_rebuild() -> int:
    """Build a fresh index from the embeddings in the database and switch to it atomically."""
    ref = active_model(fresh=True)
    with write_lock(ref.index_dir):
        return _index_rebuild_locked(ref)


def _index_build(ref: ModelRef) -> int:
    """A fresh index of `ref`'s vectors of every visible image, saved atomically in its own
    folder. Call with that folder's write lock held."""
    directory = ref.index_dir
    directory.mkdir(parents=True, exist_ok=True)
    visible = Image.objects.filter(
        status__in=[Image.Status.INDEXED, Image.Status.PROCESSING], moderation=Image.Moderation.APPROVED
    )
    ids, vectors = _embeddings_of(visible, ref.name)
    previous = IndexMeta.read(directory)
    index = _new_index(ref.name, ref.dim, capacity=int(len(ids) * 1.25))
    if previous:
        index.meta.version = previous.version
    for start in range(0, len(ids), 10000):
        index.add(ids[start : start + 10000], np.stack(vectors[start : start + 10000]))
    index.save(directory)
    _writer_cache[str(directory)] = index
    return len(ids)


def _index_rebuild_locked(ref: ModelRef) -> int:
    model = ref.name
    count = _index_build(ref)
    embedded = Image.objects.filter(status=Image.Status.PROCESSING, embeddings__model_name=model)
    Image.objects.filter(pk__in=list(embedded.values_list("pk", flat=True))).update(
        status=Image.Status.INDEXED, indexed_at=timezone.now(), error=""
    )
    # Indexed images without an embedding for this model (a new embedder): embed them again.
    missing = list(
        Image.objects.filter(status=Image.Status.INDEXED)
        .exclude(embeddings__model_name=model)
        .values_list("pk", flat=True)
    )
    if missing:
        Image.objects.filter(pk__in=missing).update(status=Image.Status.PROCESSING, embed_attempts=0)
        transaction.on_commit(lambda: enqueue_embedding(missing), robust=True)
    return count


# --- bulk imports ------------------------------------------------------------------------


def import_limits() -> importing.Limits:
    return importing.Limits(
        max_file_bytes=settings.UPLOAD_MAX_BYTES,
        max_total_bytes=settings.IMPORT_MAX_TOTAL_BYTES,
        max_ratio=settings.IMPORT_MAX_COMPRESSION_RATIO,
    )


def import_job_create(*, kind: str, path: str | Path, category: str = "", started_by=None) -> ImportJob:
    """List the source's entries into a job (one ImportItem per file, refused ones already
    failed with their reason). Raises `importing.SourceError` when the source is unusable."""
    entries = importing.list_entries(kind, path, category=_clean_text(category, 100), limits=import_limits())
    with transaction.atomic():
        job = ImportJob.objects.create(
            source_kind=kind,
            source_path=str(path),
            category=_clean_text(category, 100),
            total=len(entries),
            started_by=_user(started_by),
        )
        ImportItem.objects.bulk_create(
            [
                ImportItem(
                    job=job,
                    position=position,
                    path=entry.path[:1000],
                    title=_clean_text(entry.title, 200),
                    category=_clean_text(entry.category, 100),
                    tags=_clean_tags(entry.tags),
                    external_id=_clean_text(entry.external_id, 200),
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
    from .tasks import import_batch

    pending = list(job.items.filter(state=ImportItem.State.PENDING).values_list("pk", flat=True))
    if not pending:
        import_job_finish_if_done(job.pk)
        return
    ImportJob.objects.filter(pk=job.pk).update(updated_at=timezone.now())
    size = settings.EMBED_BATCH_SIZE

    def dispatch():
        for start in range(0, len(pending), size):
            import_batch.delay(job.pk, pending[start : start + size])

    transaction.on_commit(dispatch, robust=True)


def import_job_resume_stalled(job: ImportJob) -> bool:
    """An active job lost its tasks (a Redis or worker restart) when nothing waits in the
    embed queue and none of its batches finished for IMPORT_STALL_SECONDS: queue its pending
    items again. A job merely waiting behind other work is left alone."""
    stalled_since = timezone.now() - timezone.timedelta(seconds=settings.IMPORT_STALL_SECONDS)
    if job.is_active and job.updated_at < stalled_since and not _queue_has_work("embed"):
        import_job_start(job)
        return True
    return False


def _queue_has_work(queue: str, broker_url: str | None = None) -> bool:
    """Messages waiting in a broker queue (True when the broker cannot be asked)."""
    from amqp.exceptions import ChannelError

    from searchsite.celery import app

    try:
        with app.connection_for_write(broker_url) as conn, conn.channel() as channel:
            return channel.queue_declare(queue=queue, passive=True).message_count > 0
    except ChannelError:  # no such queue: Redis drops an empty list
        return False
    except Exception:
        return True


def import_jobs_resume_all() -> int:
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
    done = 0
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
            done += 1
    finally:
        reader.__exit__(None, None, None)
    waiting = list(
        Image.objects.filter(
            pk__in=ImportItem.objects.filter(pk__in=item_ids, state=ImportItem.State.IMPORTED).values(
                "image_id"
            ),
            status=Image.Status.PROCESSING,
        ).values_list("pk", flat=True)
    )
    if waiting:
        if embed:
            images_embed(waiting, note_near_duplicates=False)
        else:
            enqueue_embedding(waiting)
    ImportJob.objects.filter(pk=job.pk).update(updated_at=timezone.now())
    import_job_finish_if_done(job.pk)
    return done


def _import_item_done(item: ImportItem, state: str, *, image=None, error: str = "") -> None:
    ImportItem.objects.filter(pk=item.pk, state=ImportItem.State.PENDING).update(
        state=state, error=error[:2000], image=image
    )


def import_job_finish_if_done(job_id: int) -> None:
    if not ImportItem.objects.filter(job_id=job_id, state=ImportItem.State.PENDING).exists():
        ImportJob.objects.filter(
            pk=job_id, state__in=[ImportJob.State.QUEUED, ImportJob.State.RUNNING]
        ).update(state=ImportJob.State.DONE, finished_at=timezone.now())


def import_upload_store(upload) -> Path:
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
    """A folder or manifest named by staff must lie inside IMPORT_ROOT."""
    root = Path(settings.IMPORT_ROOT).resolve()
    target = (root / relative.strip().lstrip("/")).resolve()
    if not target.is_relative_to(root):
        raise importing.SourceError(f"{relative} is outside the import root {root}.")
    if not target.exists():
        raise importing.SourceError(f"{relative} does not exist under the import root {root}.")
    return target


# --- embedding models: training, evaluation, activation ----------------------------------

MODEL_KINDS_TRAINED = ("autoencoder", "metric", "triplet", "contrastive")


def model_version_default() -> ModelVersion:
    """The record of the configured default embedder (created on first use, active when no
    other model is), so it can be evaluated and re-activated like any other."""
    ref = pretrained_ref(settings.EMBEDDER)
    version, _ = ModelVersion.objects.get_or_create(
        name=ref.name,
        defaults={
            "kind": ModelVersion.Kind.PRETRAINED,
            "spec": {"backbone": ref.backbone, "pooling": ref.pooling},
            "state": ModelVersion.State.READY,
            "dim": ref.dim,
        },
    )
    if not ModelVersion.objects.filter(is_active=True).exists():
        with transaction.atomic():
            if not ModelVersion.objects.select_for_update().filter(is_active=True).exists():
                ModelVersion.objects.filter(pk=version.pk).update(
                    is_active=True, activation=ModelVersion.Activation.ACTIVE
                )
        version.refresh_from_db()
    return version


def _unique_model_name(base: str) -> str:
    existing = set(ModelVersion.objects.filter(name__startswith=base).values_list("name", flat=True))
    n = 1
    while f"{base}-v{n}" in existing:
        n += 1
    return f"{base}-v{n}"


def model_version_create(
    kind: str,
    *,
    data: str = "",
    minutes: float = 10.0,
    epochs: float | None = None,
    bits: int = 0,
    options: dict | None = None,
    name: str = "",
    created_by=None,
    start: bool = True,
) -> ModelVersion:
    """A new model version. Pretrained backbones are ready at once; the others are queued
    for training (dispatched after commit). `options` override the kind's defaults
    (dim, image_size, frozen_stages, arch, batch_size, lr, noise, margin, temperature, ...)."""
    from .learning.trainer import make_spec

    options = dict(options or {})
    bits = int(bits or options.pop("bits", 0) or 0)
    if kind == ModelVersion.Kind.PRETRAINED:
        backbone = options.get("backbone") or settings.EMBEDDER
        ref = pretrained_ref(backbone, options.get("pooling", "avg"))
        version, _ = ModelVersion.objects.get_or_create(
            name=ref.name,
            defaults={
                "kind": kind,
                "spec": {"backbone": ref.backbone, "pooling": ref.pooling},
                "state": ModelVersion.State.READY,
                "dim": ref.dim,
                "created_by": _user(created_by),
            },
        )
        return version
    if data and not Path(data).exists():
        raise ValueError(f"{data} does not exist")
    if minutes <= 0 and not epochs:
        raise ValueError("Give a positive number of minutes or epochs")
    if bits and not 8 <= bits <= 256:
        raise ValueError("bits must be between 8 and 256")
    spec = make_spec(kind, bits=bits or None, **options)
    dim = bits or int(spec["dim"])
    base = f"{kind}-{bits}bit" if bits else kind
    version = ModelVersion.objects.create(
        name=name or _unique_model_name(base),
        kind=kind,
        spec=spec,
        data_source=str(data or ""),
        minutes=minutes,
        epochs=epochs,
        dim=dim,
        bits=bits or 0,
        created_by=_user(created_by),
    )
    shutil.rmtree(version.workdir, ignore_errors=True)  # left by a deleted version of that name
    if start:
        model_train_start(version)
    return version


def model_train_start(version: ModelVersion) -> None:
    from .tasks import train_model

    transaction.on_commit(lambda: train_model.delay(version.pk), robust=True)


def _model_log(version_id: int, line: str) -> None:
    stamp = timezone.now().strftime("%H:%M:%S")
    version = ModelVersion.objects.get(pk=version_id)
    ModelVersion.objects.filter(pk=version_id).update(log=(version.log + f"{stamp} {line}\n")[-20000:])


def model_train(version_id: int, *, on_progress=None) -> ModelVersion:
    """Train (or continue training) a queued version. Idempotent: a finished or cancelled
    version is left as it is; a run cut by a restart resumes from its last checkpoint."""
    from .learning import charts
    from .learning.data import load
    from .learning.trainer import Cancelled, Trainer

    version = ModelVersion.objects.get(pk=version_id)
    if version.state not in (ModelVersion.State.QUEUED, ModelVersion.State.TRAINING):
        return version
    if version.cancel_requested:
        ModelVersion.objects.filter(pk=version_id).update(state=ModelVersion.State.CANCELLED)
        return ModelVersion.objects.get(pk=version_id)
    resumed = version.state == ModelVersion.State.TRAINING
    ModelVersion.objects.filter(pk=version_id).update(
        state=ModelVersion.State.TRAINING, started_at=version.started_at or timezone.now(), error=""
    )
    _model_log(version_id, "resumed after a restart" if resumed else "training started")
    last = {"report": 0.0, "stop": 0.0, "cancel": False}

    def report(progress) -> None:
        now = time.monotonic()
        if now - last["report"] < 1.0 and progress.stage != "done":
            return
        last["report"] = now
        ModelVersion.objects.filter(pk=version_id).update(
            progress=progress.as_dict(), updated_at=timezone.now()
        )
        history_file = version.workdir / "history.json"
        if history_file.exists() and history_file.stat().st_mtime > last.get("chart", 0):
            last["chart"] = history_file.stat().st_mtime  # a checkpoint was saved: redraw the curve
            history = json.loads(history_file.read_text())
            charts.loss_curve(history, version.workdir / "loss.png", title=f"{version.name}: training loss")
        if on_progress:
            on_progress(progress.as_dict())

    def should_stop() -> bool:
        now = time.monotonic()
        if now - last["stop"] >= 2.0:
            last["stop"] = now
            last["cancel"] = ModelVersion.objects.filter(pk=version_id, cancel_requested=True).exists()
        return last["cancel"]

    try:
        images = load(version.data_source or None, split="train")
        _model_log(version_id, f"{len(images)} images, {len(images.classes)} categories from {images.source}")
        trainer = Trainer(
            version.spec,
            images,
            version.workdir,
            minutes=version.minutes,
            epochs=version.epochs,
            report=report,
            should_stop=should_stop,
        )
        result = trainer.run()
    except Cancelled:
        ModelVersion.objects.filter(pk=version_id).update(
            state=ModelVersion.State.CANCELLED, finished_at=timezone.now()
        )
        _model_log(version_id, "cancelled")
        return ModelVersion.objects.get(pk=version_id)
    except Exception as exc:
        log.exception("Training of model %s failed", version_id)
        ModelVersion.objects.filter(pk=version_id).update(
            state=ModelVersion.State.FAILED,
            error=f"{type(exc).__name__}: {exc}"[:2000],
            finished_at=timezone.now(),
        )
        _model_log(version_id, f"failed: {exc}")
        return ModelVersion.objects.get(pk=version_id)
    history = result.pop("history")
    charts.loss_curve(history, version.workdir / "loss.png", title=f"{version.name}: training loss")
    ModelVersion.objects.filter(pk=version_id).update(
        state=ModelVersion.State.READY,
        metrics=result,
        history=history,
        spec=trainer.spec,
        finished_at=timezone.now(),
    )
    _model_log(version_id, f"done: {result['epochs']} epochs in {result['train_seconds']} s")
    return ModelVersion.objects.get(pk=version_id)


def model_train_cancel(version: ModelVersion) -> bool:
    if version.state == ModelVersion.State.QUEUED:
        ModelVersion.objects.filter(pk=version.pk, state=ModelVersion.State.QUEUED).update(
            state=ModelVersion.State.CANCELLED, cancel_requested=True, finished_at=timezone.now()
        )
        return True
    if version.state == ModelVersion.State.TRAINING:
        ModelVersion.objects.filter(pk=version.pk).update(cancel_requested=True)
        return True
    return False


def model_train_resume(version: ModelVersion) -> bool:
    """Continue a cancelled or failed run from its last checkpoint."""
    if version.state not in (ModelVersion.State.CANCELLED, ModelVersion.State.FAILED):
        return False
    ModelVersion.objects.filter(pk=version.pk).update(
        state=ModelVersion.State.QUEUED, cancel_requested=False, error="", finished_at=None
    )
    model_train_start(version)
    return True


def models_resume_stalled(stale_after_seconds: int = 300) -> int:
    """Training and activation runs whose worker died: queued again (they resume)."""
    from .tasks import activate_model, train_model

    if _queue_has_work("train"):
        return 0
    cutoff = timezone.now() - timezone.timedelta(seconds=stale_after_seconds)
    stalled = ModelVersion.objects.filter(updated_at__lt=cutoff)
    count = 0
    for version in stalled.filter(state__in=[ModelVersion.State.QUEUED, ModelVersion.State.TRAINING]):
        ModelVersion.objects.filter(pk=version.pk).update(updated_at=timezone.now())
        train_model.delay(version.pk)
        count += 1
    for version in stalled.filter(activation=ModelVersion.Activation.ACTIVATING):
        ModelVersion.objects.filter(pk=version.pk).update(updated_at=timezone.now())
        activate_model.delay(version.pk)
        count += 1
    return count


def model_evaluate(
    version_id: int, protocol: str, data: str, *, limits: dict | None = None, report=None
) -> dict:
    """Run an evaluation protocol on a ready version; the figures are stored with it."""
    from .learning import charts, protocols

    version = ModelVersion.objects.get(pk=version_id)
    if not version.is_ready:
        raise ValueError(f"{version.name} is not ready (state: {version.state})")
    if protocol not in protocols.PROTOCOLS:
        raise ValueError(f"Unknown protocol {protocol!r}: one of {', '.join(protocols.PROTOCOLS)}")
    limits = limits or {}
    embedder = get_embedder(model_ref(version))

    def progress(info):
        ModelVersion.objects.filter(pk=version_id).update(
            progress={**info, "evaluating": protocol}, updated_at=timezone.now()
        )
        if report:
            report(info)

    if protocol == "cifar10":
        result = protocols.cifar10(
            embedder,
            data,
            db_limit=limits.get("db"),
            query_limit=limits.get("queries"),
            bits=version.bits,
            report=progress,
        )
        picture = version.workdir / f"confusion-{protocol}.png"
        charts.confusion_matrix(
            result["confusion"], result["classes"], picture, title=f"{version.name}: {protocol}"
        )
        result["confusion_png"] = str(picture)
    else:
        result = protocols.neardup(
            embedder,
            data,
            catalogue_limit=limits.get("db"),
            queries=limits.get("queries") or 500,
            report=progress,
        )
    result.update(
        protocol=protocol, data=str(data), evaluated_at=timezone.now().isoformat(timespec="seconds")
    )
    with transaction.atomic():
        version = ModelVersion.objects.select_for_update().get(pk=version_id)
        version.evaluations = {**version.evaluations, protocol: result}
        version.progress = {"stage": "evaluated", "evaluating": protocol, "done": 1, "total": 1}
        version.save(update_fields=["evaluations", "progress", "updated_at"])
    return result


def model_activate_start(version: ModelVersion, *, dispatch: bool = True) -> None:
    """Queue the switch to `version`: its vectors for every image, its own index, then the
    switch. Searches go on with the active model meanwhile."""
    from .tasks import activate_model

    if not version.is_ready:
        raise ValueError(f"{version.name} is not ready (state: {version.state})")
    if version.is_active:
        return
    ModelVersion.objects.filter(pk=version.pk).update(
        activation=ModelVersion.Activation.ACTIVATING,
        activation_started_at=timezone.now(),
        activation_progress={"stage": "queued"},
    )
    if dispatch:
        transaction.on_commit(lambda: activate_model.delay(version.pk), robust=True)


def model_activate(version_id: int, *, batch_size: int = 64) -> ModelVersion:
    """Embed every visible image with the version (batched, resumable: only what lacks its
    vector), build its index beside the active one, then switch in one transaction."""
    version = ModelVersion.objects.get(pk=version_id)
    if version.is_active or version.activation != ModelVersion.Activation.ACTIVATING:
        return version
    ref = model_ref(version)
    embedder = get_embedder(ref)
    candidates = Image.objects.filter(
        status__in=[Image.Status.INDEXED, Image.Status.PROCESSING], moderation=Image.Moderation.APPROVED
    )
    total = candidates.count()
    try:
        while True:
            todo = list(
                candidates.exclude(embeddings__model_name=ref.name).values_list("pk", flat=True)[:batch_size]
            )
            if not todo:
                break
            images, pictures = [], []
            for image in Image.objects.filter(pk__in=todo):
                try:
                    with image.file.open("rb") as fh, PILImage.open(fh) as im:
                        pictures.append(im.convert("RGBA" if im.mode == "RGBA" else "RGB"))
                    images.append(image)
                except (OSError, ValueError) as exc:
                    images_mark_failed([image.pk], f"The stored file cannot be read: {exc}")
            vectors = embedder.embed_gallery(pictures) if pictures else []
            Embedding.objects.bulk_create(
                [
                    Embedding(image=image, model_name=ref.name, dim=ref.dim, vector=vec.tobytes())
                    for image, vec in zip(images, vectors)
                ],
                ignore_conflicts=True,
            )
            done = Embedding.objects.filter(image__in=candidates, model_name=ref.name).count()
            ModelVersion.objects.filter(pk=version_id).update(
                activation_progress={"stage": "embedding", "done": done, "total": total},
                updated_at=timezone.now(),
            )
            if not ModelVersion.objects.filter(
                pk=version_id, activation=ModelVersion.Activation.ACTIVATING
            ).exists():
                return ModelVersion.objects.get(pk=version_id)  # cancelled
        ModelVersion.objects.filter(pk=version_id).update(
            activation_progress={"stage": "building index", "done": total, "total": total}
        )
        with write_lock(ref.index_dir):
            count = _index_build(ref)
    except Exception as exc:
        log.exception("Activation of model %s failed", version_id)
        ModelVersion.objects.filter(pk=version_id).update(
            activation=ModelVersion.Activation.FAILED,
            activation_progress={"stage": "failed", "error": str(exc)[:500]},
        )
        raise
    with transaction.atomic():
        ModelVersion.objects.select_for_update().filter(is_active=True).update(
            is_active=False, activation=ModelVersion.Activation.NONE
        )
        ModelVersion.objects.filter(pk=version_id).update(
            is_active=True,
            activation=ModelVersion.Activation.ACTIVE,
            activated_at=timezone.now(),
            activation_progress={"stage": "active", "done": count, "total": total},
        )
        started = version.activation_started_at or timezone.now()
        transaction.on_commit(lambda: _after_switch(started), robust=True)
    forget_active_model()
    _model_log(version_id, f"activated: {count} images in its index")
    return ModelVersion.objects.get(pk=version_id)


def images_catch_up_with_active_model() -> None:
    """Images that lack the active model's vector get it: those marked indexed (with the old
    model's) go back to processing, and every such processing image is queued."""
    name = active_model(fresh=True).name
    missing = list(
        Image.objects.filter(status=Image.Status.INDEXED)
        .exclude(embeddings__model_name=name)
        .values_list("pk", flat=True)
    )
    if missing:
        Image.objects.filter(pk__in=missing).update(status=Image.Status.PROCESSING, embed_attempts=0)
    images_enqueue_pending()


def _after_switch(started) -> None:
    """Catch up with what changed during the activation: new uploads get the new model's
    vectors; items hidden or rejected meanwhile leave the new index."""
    images_catch_up_with_active_model()
    changed = list(
        Image.objects.filter(updated_at__gte=started)
        .exclude(status=Image.Status.INDEXED, moderation=Image.Moderation.APPROVED)
        .values_list("pk", flat=True)
    )
    if changed:
        _enqueue_index_remove(changed)
