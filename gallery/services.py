"""Writes. `image_create` is the one upload path for the page, the API, the admin and the
import command; the index is only ever written through `index_sync`, `index_remove` and
`index_rebuild`, which hold the single-writer lock."""

import logging
from pathlib import Path

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from PIL import Image as PILImage

from .embedders import embedder_identity, get_embedder
from .imaging import decode_image, encode_for_storage, make_thumbnail, sha256_of
from .index import IndexMeta, VectorIndex, write_lock
from .models import Embedding, Image

log = logging.getLogger(__name__)


def _clean_text(value: str | None, max_length: int) -> str:
    return " ".join((value or "").split())[:max_length]


def image_create(
    *, data: bytes, title: str = "", category: str = "", original_name: str = "", enqueue: bool = True
) -> tuple[Image, bool]:
    """Validate, store a re-encoded copy and a thumbnail, record the image, and (after the
    transaction commits) queue its embedding. Returns (image, created); identical bytes
    return the existing image. Raises `ImageRejected` and leaves nothing behind."""
    decoded = decode_image(data, max_bytes=settings.UPLOAD_MAX_BYTES, max_pixels=settings.UPLOAD_MAX_PIXELS)
    digest = sha256_of(data)
    existing = Image.objects.filter(sha256=digest).first()
    if existing:
        return existing, False
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


def _delete_files(image: Image) -> None:
    for field in (image.file, image.thumbnail):
        if field.name:
            field.storage.delete(field.name)


def enqueue_embedding(image_ids: list[int]) -> None:
    from .tasks import embed_images

    for start in range(0, len(image_ids), settings.EMBED_BATCH_SIZE):
        embed_images.delay(image_ids[start : start + settings.EMBED_BATCH_SIZE])


def enqueue_index_sync() -> None:
    from .tasks import index_sync as index_sync_task

    index_sync_task.delay()


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


def images_embed(image_ids: list[int]) -> int:
    """Compute and store embeddings for the given images that still need one, then queue an
    index update. Idempotent; counts attempts so that a task that keeps crashing its worker
    gives up with the error recorded."""
    embedder = get_embedder()
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


def images_record_error(image_ids: list[int], error: str) -> None:
    Image.objects.filter(pk__in=image_ids, status=Image.Status.PROCESSING).update(error=error[:2000])


def images_mark_failed(image_ids: list[int], error: str) -> None:
    Image.objects.filter(pk__in=image_ids, status=Image.Status.PROCESSING).update(
        status=Image.Status.FAILED, error=error[:2000]
    )


def images_hide(image_ids: list[int]) -> int:
    """Take images out of search: at once for readers (they re-check the status), and out
    of the index by the single writer right after the commit."""
    ids = list(
        Image.objects.filter(pk__in=image_ids)
        .exclude(status=Image.Status.HIDDEN)
        .values_list("pk", flat=True)
    )
    if ids:
        Image.objects.filter(pk__in=ids).update(status=Image.Status.HIDDEN)
        transaction.on_commit(lambda: _enqueue_index_remove(ids), robust=True)
    return len(ids)


def images_unhide(image_ids: list[int]) -> int:
    """Back to search: the stored embedding is reused, so this is only an index update."""
    ids = list(Image.objects.filter(pk__in=image_ids, status=Image.Status.HIDDEN).values_list("pk", flat=True))
    if ids:
        Image.objects.filter(pk__in=ids).update(status=Image.Status.PROCESSING, embed_attempts=0, error="")
        transaction.on_commit(lambda: enqueue_embedding(ids), robust=True)
    return len(ids)


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


def _writer_index(model: str, dim: int) -> VectorIndex | None:
    """The writer's in-memory index, reloaded when another writer saved a newer version.
    Call with the write lock held."""
    directory = Path(settings.INDEX_DIR)
    on_disk = IndexMeta.read(directory)
    cached = _writer_cache.get("index")
    if on_disk is None:
        _writer_cache.pop("index", None)
        return None
    if cached is None or cached.meta.version != on_disk.version:
        cached = VectorIndex.load(directory, ef=settings.INDEX_EF_SEARCH)
        _writer_cache["index"] = cached
    if cached is None or cached.meta.model != model or cached.meta.dim != dim:
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


def index_sync() -> int:
    """Add every embedded image still marked processing to the index, save, mark indexed.
    With no usable index on disk, rebuild it from the database instead."""
    model, dim = embedder_identity()
    directory = Path(settings.INDEX_DIR)
    with write_lock(directory):
        index = _writer_index(model, dim)
        if index is None:
            return _index_rebuild_locked(model, dim)
        pending = Image.objects.filter(status=Image.Status.PROCESSING)
        ids, vectors = _embeddings_of(pending, model)
        if not ids:
            return 0
        index.add(ids, np.stack(vectors))
        index.save(directory)
        Image.objects.filter(pk__in=ids, status=Image.Status.PROCESSING).update(
            status=Image.Status.INDEXED, indexed_at=timezone.now(), error=""
        )
        # A hide that committed while we were adding: take it out again at once.
        hidden = list(Image.objects.filter(pk__in=ids).exclude(status=Image.Status.INDEXED).values_list("pk", flat=True))
        if hidden and index.remove(hidden):
            index.save(directory)
        return len(ids)


def index_remove(image_ids: list[int]) -> int:
    directory = Path(settings.INDEX_DIR)
    with write_lock(directory):
        index = _writer_index(*embedder_identity())
        if index is None:
            return 0
        visible = set(
            Image.objects.filter(pk__in=image_ids, status=Image.Status.INDEXED).values_list("pk", flat=True)
        )
        removed = index.remove([pk for pk in image_ids if pk not in visible])
        if removed:
            index.save(directory)
        return removed


def index_rebuild() -> int:
    """Build a fresh index from the embeddings in the database and switch to it atomically."""
    with write_lock(Path(settings.INDEX_DIR)):
        return _index_rebuild_locked(*embedder_identity())


def _index_rebuild_locked(model: str, dim: int) -> int:
    directory = Path(settings.INDEX_DIR)
    visible = Image.objects.filter(status__in=[Image.Status.INDEXED, Image.Status.PROCESSING])
    ids, vectors = _embeddings_of(visible, model)
    previous = IndexMeta.read(directory)
    index = _new_index(model, dim, capacity=int(len(ids) * 1.25))
    if previous:
        index.meta.version = previous.version
    for start in range(0, len(ids), 10000):
        index.add(ids[start : start + 10000], np.stack(vectors[start : start + 10000]))
    index.save(directory)
    _writer_cache["index"] = index
    Image.objects.filter(pk__in=ids, status=Image.Status.PROCESSING).update(
        status=Image.Status.INDEXED, indexed_at=timezone.now(), error=""
    )
    # Indexed images without an embedding for this model (a new embedder): embed them again.
    missing = list(
        Image.objects.filter(status=Image.Status.INDEXED).exclude(pk__in=ids).values_list("pk", flat=True)
    )
    if missing:
        Image.objects.filter(pk__in=missing).update(status=Image.Status.PROCESSING, embed_attempts=0)
        transaction.on_commit(lambda: enqueue_embedding(missing), robust=True)
    return len(ids)
