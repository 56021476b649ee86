"""Embedders: one small interface (`name`, `dim`, `embed(images)`), one module per family.

The active model decides which embedder and which index serve searches: the `ModelVersion`
marked active, else the configured default (`EMBEDDER`). `active_model()` reads it (at most
once a second per process, or at once with `fresh=True`), `get_embedder()` returns its embedder, loaded once per process."""

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings

from .catalog import LITE0_DIM, TORCHVISION_BACKBONES, lite0_model_name

if TYPE_CHECKING:  # torch is imported only by processes that embed
    from .base import Embedder

_lock = threading.Lock()
_cache: dict[str, "Embedder"] = {}
_active: dict = {}
ACTIVE_TTL_SECONDS = 1.0


@dataclass(frozen=True)
class ModelRef:
    """What the rest of the app needs to know about a model, without loading it."""

    name: str  # Embedding.model_name of its vectors
    dim: int
    backbone: str  # efficientnet_lite0 | a torchvision backbone | learned
    pooling: str = "avg"
    weights: str = ""  # model file of a learned model
    bits: int = 0
    version_id: int | None = None

    @property
    def index_dir(self) -> Path:
        """The default model keeps the original place; every other model its own folder, so
        a new index is built beside the one in use."""
        if self.name == default_model().name:
            return Path(settings.INDEX_DIR)
        return Path(settings.INDEX_DIR) / "models" / self.name


def pretrained_ref(backbone: str, pooling: str = "avg", version_id=None) -> ModelRef:
    if backbone == "efficientnet_lite0":
        return ModelRef(
            lite0_model_name(settings.EMBEDDER_IMAGE_SIZE), LITE0_DIM, backbone, "gem", version_id=version_id
        )
    if backbone in TORCHVISION_BACKBONES:
        return ModelRef(
            f"{backbone}-{pooling}",
            TORCHVISION_BACKBONES[backbone][1],
            backbone,
            pooling,
            version_id=version_id,
        )
    raise ValueError(f"Unknown embedder {backbone!r}")


def default_model() -> ModelRef:
    return pretrained_ref(settings.EMBEDDER)


def model_ref(version) -> ModelRef:
    if version.kind == "pretrained":
        return pretrained_ref(version.spec["backbone"], version.spec.get("pooling", "avg"), version.pk)
    return ModelRef(
        version.name,
        version.dim,
        "learned",
        weights=str(version.weights_path),
        bits=version.bits,
        version_id=version.pk,
    )


def active_model(*, fresh: bool = False) -> ModelRef:
    """Searches take the model read within the last second; the writers of vectors and of
    the index read it `fresh`, so that none acts on a switch another process has just made."""
    now = time.monotonic()
    cached = _active.get("ref")
    if not fresh and cached is not None and now - _active["at"] < ACTIVE_TTL_SECONDS:
        return cached
    from ..models import ModelVersion

    version = ModelVersion.objects.filter(is_active=True).first()
    ref = model_ref(version) if version else default_model()
    _active.update(ref=ref, at=now)
    return ref


def forget_active_model() -> None:
    _active.clear()


def build_embedder(ref: ModelRef) -> "Embedder":
    if ref.backbone == "efficientnet_lite0":
        from .efficientnet_lite import EfficientNetLiteEmbedder

        return EfficientNetLiteEmbedder(image_size=settings.EMBEDDER_IMAGE_SIZE)
    if ref.backbone == "learned":
        from .learned import LearnedEmbedder

        return LearnedEmbedder(ref.name, ref.weights)
    from .torchvision_backbones import TorchvisionEmbedder

    return TorchvisionEmbedder(ref.backbone, weights_dir=settings.EMBEDDER_WEIGHTS_DIR, pooling=ref.pooling)


def embedder_identity(ref: ModelRef | None = None) -> tuple[str, int]:
    """(model name, dimension) of an embedder without loading it: the index writer needs
    only these, and should not hold a copy of the network in memory."""
    ref = ref or active_model()
    return ref.name, ref.dim


def get_embedder(ref: ModelRef | None = None) -> "Embedder":
    ref = ref or active_model()
    key = ref.name
    if ref.weights:  # a model file written again under the same name is another model
        try:
            key = f"{ref.name}:{os.stat(ref.weights).st_mtime_ns}"
        except OSError:
            pass
    with _lock:
        if key not in _cache:
            _cache[key] = build_embedder(ref)
        return _cache[key]


__all__ = [
    "ModelRef",
    "active_model",
    "build_embedder",
    "default_model",
    "embedder_identity",
    "forget_active_model",
    "get_embedder",
    "model_ref",
    "pretrained_ref",
]
