"""Switching searches to another model version (the train queue): its vectors for every
image, its own index beside the one in use, then one transaction. Searches go on with the
active model meanwhile; what changed during the switch is caught up right after it."""

import logging
from datetime import datetime

import numpy as np
from django.db import transaction
from django.utils import timezone
from PIL import Image as PILImage

from ..embedders import forget_active_model, get_embedder, model_ref
from ..models import Embedding, Image, ModelVersion
from . import dispatch
from .embedding import images_mark_failed
from .index_writer import index_build
from .model_versions import model_version_log
from .recovery import images_catch_up_with_served_models

log = logging.getLogger(__name__)


def model_activate_start(version: ModelVersion, *, dispatch_task: bool = True) -> None:
    """Mark `version` activating and (unless the caller runs it itself) queue the switch."""
    if not version.is_ready:
        raise ValueError(f"{version.name} is not ready (state: {version.state})")
    if version.is_active:
        return
    ModelVersion.objects.filter(pk=version.pk).update(
        activation=ModelVersion.Activation.ACTIVATING,
        activation_started_at=timezone.now(),
        activation_progress={"stage": "queued"},
    )
    if dispatch_task:
        dispatch.model_activate(version.pk)


def model_activate(version_id: int, *, batch_size: int = 64) -> ModelVersion:
    """Embed every indexable image with the version (batched, resumable: only what lacks its
    vector), build its index beside the active one, then switch in one transaction."""
    version = ModelVersion.objects.get(pk=version_id)
    if version.is_active or version.activation != ModelVersion.Activation.ACTIVATING:
        return version
    ref = model_ref(version)
    total = Image.objects.indexable().count()
    try:
        if not _embed_all(version, batch_size=batch_size, total=total):
            return ModelVersion.objects.get(pk=version_id)  # cancelled
        ModelVersion.objects.filter(pk=version_id).update(
            activation_progress={"stage": "building index", "done": total, "total": total}
        )
        count = index_build(ref)
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
        model_version_log(
            version_id,
            f"activated: {count} images in its index",
            is_active=True,
            activation=ModelVersion.Activation.ACTIVE,
            activated_at=timezone.now(),
            activation_progress={"stage": "active", "done": count, "total": total},
        )
        started = version.activation_started_at or timezone.now()
        transaction.on_commit(lambda: _after_switch(started), robust=True)
    forget_active_model()
    return ModelVersion.objects.get(pk=version_id)


def _embed_all(version: ModelVersion, *, batch_size: int, total: int) -> bool:
    """The version's vector for every indexable image lacking one; False when cancelled."""
    ref = model_ref(version)
    embedder = get_embedder(ref)
    candidates = Image.objects.indexable()
    unreadable: set[int] = set()  # left without the vector; the catch-up after the switch fails them
    while True:
        todo = list(
            candidates.without_vector(ref.name)
            .exclude(pk__in=unreadable)
            .values_list("pk", flat=True)[:batch_size]
        )
        if not todo:
            return True
        images, pictures = [], []
        for image in Image.objects.filter(pk__in=todo):
            try:
                with image.file.open("rb") as fh, PILImage.open(fh) as im:
                    pictures.append(im.convert("RGBA" if im.mode == "RGBA" else "RGB"))
                images.append(image)
            except (OSError, ValueError) as exc:
                unreadable.add(image.pk)
                images_mark_failed([image.pk], "The stored file cannot be read", exc)
        vectors = embedder.embed_gallery(pictures) if pictures else np.zeros((0, ref.vector_size), np.float32)
        Embedding.objects.bulk_create(
            [
                Embedding(image=image, model_name=ref.name, dim=ref.vector_size, vector=vec.tobytes())
                for image, vec in zip(images, vectors)
            ],
            ignore_conflicts=True,
        )
        done = Embedding.objects.filter(image__in=candidates, model_name=ref.name).count()
        ModelVersion.objects.filter(pk=version.pk).update(
            activation_progress={"stage": "embedding", "done": done, "total": total},
            updated_at=timezone.now(),
        )
        if not ModelVersion.objects.filter(
            pk=version.pk, activation=ModelVersion.Activation.ACTIVATING
        ).exists():
            return False


def _after_switch(started: datetime) -> None:
    """Catch up with what changed during the activation: new uploads get the new model's
    vectors; items hidden or rejected meanwhile leave the new index."""
    images_catch_up_with_served_models()
    changed = list(Image.objects.filter(updated_at__gte=started).unsearchable().values_list("pk", flat=True))
    if changed:
        dispatch.index_remove(changed)
