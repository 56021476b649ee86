"""Vectors and perceptual hashes for stored images (the embed queue): the database keeps them,
the index writer picks them up. Each image gets the vector of every served model (the active
one, and the copy model when that is another) and its PDQ hash; then, once nothing else waits,
its photo's local features (`item_features`)."""

import contextlib
import logging
import time

from django.conf import settings
from django.core.cache import cache
from django.db import close_old_connections, transaction
from django.db.models import F
from PIL import Image as PILImage

from .. import queues
from ..embedders import ModelRef, active_model, get_embedder, served_models
from ..models import Embedding, Image
from ..retrieval.hashes import pdq_hash
from ..selectors.catalogue import IdWindows
from ..selectors.operations import queue_depth
from . import dispatch

logger = logging.getLogger(__name__)

# A bulk batch is embedded this many images at a time; between two, it hands over to an upload
# that waits (see `_hand_over`). An upload waits for at most one such part (0.2-0.5 s).
BULK_CHUNK = 8


def _open_for_embedding(image: Image) -> PILImage.Image:
    """The stored photo at no more than 4x the embedder's input (JPEG decoded at a reduced
    scale, anything else shrunk at once): a batch of 32 never holds full-size decodes (a
    40-megapixel PNG is 160 MB as pixels)."""
    side = 4 * settings.EMBEDDER_IMAGE_SIZE
    with image.file.open("rb") as fh, PILImage.open(fh) as im:
        im.draft("RGB", (side // 2, side // 2))
        picture = im.convert("RGBA" if im.mode == "RGBA" else "RGB")
    picture.thumbnail((side, side), PILImage.Resampling.BOX)
    return picture


def _vectors_present(image_ids: list[int], refs: list[ModelRef]) -> set[tuple[int, str]]:
    return set(
        Embedding.objects.filter(image_id__in=image_ids, model_name__in=[r.name for r in refs]).values_list(
            "image_id", "model_name"
        )
    )


def _embed_and_hash(
    images: list[Image], pictures: list[PILImage.Image], refs: list[ModelRef]
) -> list[Embedding]:
    """Each model's vectors the images lack, and their missing hashes (set on the images):
    computed before any write, so no database lock is held while the CPU works (SQLite's
    writers would wait, and give up after their timeout on a busy machine). Returns the rows
    to store."""
    present = _vectors_present([im.pk for im in images], refs)
    rows = []
    for ref in refs:
        todo = [n for n, im in enumerate(images) if (im.pk, ref.name) not in present]
        if not todo:
            continue
        embedder = get_embedder(ref)
        vectors = embedder.embed_gallery([pictures[n] for n in todo])
        rows += [
            Embedding(image=images[n], model_name=ref.name, dim=ref.vector_size, vector=vec.tobytes())
            for n, vec in zip(todo, vectors)
        ]
    for image, picture in zip(images, pictures):
        if image.pdq is None:
            image.pdq, image.pdq_quality = pdq_hash(picture)
    return rows


def _store(images: list[Image], rows: list[Embedding]) -> None:
    for image in images:
        Image.objects.filter(pk=image.pk, pdq__isnull=True).update(
            pdq=image.pdq, pdq_quality=image.pdq_quality
        )
    Embedding.objects.bulk_create(rows, ignore_conflicts=True)


def images_embed(image_ids: list[int], *, bulk: bool = False) -> int:
    """Compute and store what the given images still need (vectors, hash), then queue an
    index update. Idempotent; counts attempts so that a task that keeps crashing its worker
    gives up with the error recorded. The index update also notes which existing item each
    upload copies. `bulk` (imports, recovery): the update goes to the bulk index queue and
    skips that note (staff see near-duplicate groups instead)."""
    refs = served_models(active_model(fresh=True))
    names = [r.name for r in refs]
    Image.objects.filter(pk__in=image_ids).processing().update(embed_attempts=F("embed_attempts") + 1)
    images = list(Image.objects.filter(pk__in=image_ids).processing().lacking(names))
    ready, pictures = [], []
    for image in images:
        if image.embed_attempts > settings.EMBED_MAX_ATTEMPTS:
            images_mark_failed(
                [image.pk], f"Gave up after {settings.EMBED_MAX_ATTEMPTS} attempts. {image.error}".strip()
            )
            continue
        try:
            pictures.append(_open_for_embedding(image))
            ready.append(image)
        except (OSError, ValueError) as exc:
            images_mark_failed([image.pk], "The stored file cannot be read", exc)
    if ready:
        stored: list[Image] = []
        chunk = BULK_CHUNK if bulk else len(ready)
        for start in range(0, len(ready), chunk):
            if start and _a_visitor_waits():
                _hand_over([im.pk for im in ready[start:]])
                break
            part = ready[start : start + chunk]
            embedding_mark_busy()
            rows = _embed_and_hash(part, pictures[start : start + chunk], refs)
            with transaction.atomic():
                _store(part, rows)
            stored += part
        # The index writer notes which existing item an upload copies, with the copy index it
        # holds (this process never loads it).
        dispatch.index_sync(note_copies=None if bulk else [im.pk for im in stored], bulk=bulk)
        dispatch.item_features_store([im.pk for im in stored])  # (after the index: none waits)
        return len(stored)
    if Image.objects.filter(pk__in=image_ids).processing().complete(names).exists():
        dispatch.index_sync(bulk=bulk)  # embedded earlier, but the index update was lost
    return 0


# Set while a process embeds (and for a moment after): the features kept after embedding
# (`item_features`) wait meanwhile, as they wait for queued embedding work.
EMBEDDING_BUSY_KEY = "gallery:embedding-busy"
EMBEDDING_BUSY_SECONDS = 2


def embedding_mark_busy() -> None:
    with contextlib.suppress(Exception):  # (no cache: the features only wait for queued work)
        cache.set(EMBEDDING_BUSY_KEY, 1, timeout=EMBEDDING_BUSY_SECONDS)


def embedding_busy() -> bool:
    """A process embeds, or did a moment ago (`embedding_mark_busy`)."""
    try:
        return cache.get(EMBEDDING_BUSY_KEY) is not None
    except Exception:
        return False


def _a_visitor_waits() -> bool:
    """A task a visitor waits on (an upload) is in the embed queue, not yet taken."""
    try:
        return queue_depth(queues.EMBED) > 0
    except Exception:  # the broker cannot be asked: go on with the batch
        return False


def _hand_over(image_ids: list[int]) -> None:
    """The rest of a bulk batch goes back to the bulk queue, this attempt not counted, so that
    this process takes the waiting upload next instead of after the whole batch (1-5 s)."""
    Image.objects.filter(pk__in=image_ids).update(embed_attempts=F("embed_attempts") - 1)
    dispatch.images_embed(image_ids, bulk=True)


BACKFILL_WINDOW = 100_000  # image ids one backfill run looks at
_backfill_windows = IdWindows(BACKFILL_WINDOW)  # by the served models


def images_backfill(*, seconds: float = 45.0, batch_size: int = 64) -> int:
    """Searchable images that lack a served model's vector or their hash (a gallery from
    before the copy channel, or a copy model changed in the settings) get them, batch by
    batch for about `seconds`; each batch then goes to the index writer. They stay
    searchable meanwhile. Each run looks at a window of ids (looking for them among a million
    images took 1.4-4 s every minute), the next run at the next window once this one is done."""
    refs = served_models(active_model(fresh=True))
    names = [r.name for r in refs]
    key = ",".join(sorted(names))
    start, end = _backfill_windows.next(key)
    lacking = Image.objects.filter(status=Image.Status.INDEXED, pk__gte=start, pk__lt=end).lacking(names)
    deadline = time.monotonic() + seconds
    done = 0
    unreadable: set[int] = set()
    while time.monotonic() < deadline:
        batch = list(lacking.exclude(pk__in=unreadable)[:batch_size])
        if not batch:
            break
        images, pictures = [], []
        for image in batch:
            try:
                pictures.append(_open_for_embedding(image))
                images.append(image)
            except (OSError, ValueError):
                unreadable.add(image.pk)
        _store(images, _embed_and_hash(images, pictures, refs))
        dispatch.item_features_store([im.pk for im in images])
        dispatch.index_sync([im.pk for im in images], bulk=True)
        done += len(images)
    else:  # out of time with some left: this window again
        _backfill_windows.again(key, start)
    return done


def _shown(error: str, cause: BaseException | None) -> str:
    """What the uploader and staff see: our words and the kind of fault. The exception's own
    text (server paths, library internals) goes to the log only."""
    return f"{error} ({type(cause).__name__})" if cause is not None else error


def images_record_error(image_ids: list[int], error: str, cause: BaseException | None = None) -> None:
    """The last error of images still waiting (shown to the uploader and staff)."""
    if cause is not None:
        logger.warning("images %s: %s: %r", image_ids, error, cause)
    Image.objects.filter(pk__in=image_ids).processing().update(error=_shown(error, cause)[:2000])


def images_mark_failed(image_ids: list[int], error: str, cause: BaseException | None = None) -> None:
    if cause is not None:
        logger.error("images %s failed: %s: %r", image_ids, error, cause)
    Image.objects.filter(pk__in=image_ids).processing().update(
        status=Image.Status.FAILED, error=_shown(error, cause)[:2000]
    )


def embedders_prepare() -> dict[str, str]:
    """Load every served model's embedder once, so that its ONNX graph is exported, checked
    and recorded before the web starts (the web then embeds queries without torch). Returns
    what runs each model."""
    prepared = {}
    for ref in served_models(active_model(fresh=True)):
        embedder = get_embedder(ref)
        embedder.embed([PILImage.new("RGB", (64, 64), "white")])
        prepared[ref.name] = str(getattr(embedder, "runtime", "") or type(embedder).__name__)
    return prepared


def embedders_warm() -> None:
    """`embedders_prepare` in a pool process of an embedding worker as it starts (in a thread
    of its own): the first images it takes then wait for no model to load. Measured at a
    million items, the first upload a new pool process took was searchable after 5-6 s, the
    others after about 1 s. A failure is logged: the first task loads the models itself."""
    started = time.perf_counter()
    try:
        prepared = embedders_prepare()
        logger.info("embedders warmed in %.1f s: %s", time.perf_counter() - started, prepared)
    except Exception:
        logger.exception("warming the embedders failed; the first task loads them")
    finally:
        close_old_connections()
