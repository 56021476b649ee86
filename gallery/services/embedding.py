"""Vectors for stored images (the embed queue): the database keeps them, the index writer
picks them up."""

import numpy as np
from django.conf import settings
from django.db import transaction
from django.db.models import F
from PIL import Image as PILImage

from ..embedders import ModelRef, active_model, get_embedder
from ..models import Embedding, Image
from ..selectors.search import index_reader
from . import dispatch


def images_embed(image_ids: list[int], *, note_near_duplicates: bool = True) -> int:
    """Compute and store embeddings for the given images that still need one, then queue an
    index update. Idempotent; counts attempts so that a task that keeps crashing its worker
    gives up with the error recorded. Bulk imports skip the near-duplicate note (staff see
    near-duplicate groups instead), so the embed worker does not reload the index per batch."""
    ref = active_model(fresh=True)
    embedder = get_embedder(ref)
    Image.objects.filter(pk__in=image_ids).processing().update(embed_attempts=F("embed_attempts") + 1)
    images = list(Image.objects.filter(pk__in=image_ids).processing().without_vector(embedder.name))
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
            dispatch.index_sync()
    elif Image.objects.filter(pk__in=image_ids).processing().with_vector(embedder.name).exists():
        dispatch.index_sync()  # embedded earlier, but the index update was lost
    return len(ready)


def _note_near_duplicates(images: list[Image], vectors: np.ndarray, ref: ModelRef) -> None:
    """Record the closest existing item when it is nearly identical (for staff and uploaders)."""
    index = index_reader(ref).get()
    if index is None or len(index) == 0:
        return
    for image, vector in zip(images, vectors):
        hits = [(label, score) for label, score in index.query(vector, 2) if label != image.pk]
        if hits and hits[0][1] >= settings.NEAR_DUPLICATE_THRESHOLD:
            image.near_duplicate_of_id = hits[0][0]
            Image.objects.filter(pk=image.pk).update(near_duplicate_of_id=hits[0][0])


def images_record_error(image_ids: list[int], error: str) -> None:
    """The last error of images still waiting (shown to the uploader and staff)."""
    Image.objects.filter(pk__in=image_ids).processing().update(error=error[:2000])


def images_mark_failed(image_ids: list[int], error: str) -> None:
    Image.objects.filter(pk__in=image_ids).processing().update(status=Image.Status.FAILED, error=error[:2000])
