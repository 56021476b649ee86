"""Embedders: one small interface (`name`, `dim`, `embed(images)`), one module per family.

`get_embedder()` returns the configured embedder, loaded once per process under a lock."""

import threading
from typing import TYPE_CHECKING

from django.conf import settings

from .catalog import LITE0_DIM, TORCHVISION_BACKBONES, lite0_model_name

if TYPE_CHECKING:  # torch is imported only by processes that embed
    from .base import Embedder

_lock = threading.Lock()
_cache: dict[str, "Embedder"] = {}


def build_embedder(name: str) -> "Embedder":
    if name == "efficientnet_lite0":
        from .efficientnet_lite import EfficientNetLiteEmbedder

        return EfficientNetLiteEmbedder(image_size=settings.EMBEDDER_IMAGE_SIZE)
    from .torchvision_backbones import TorchvisionEmbedder

    if name in TORCHVISION_BACKBONES:
        return TorchvisionEmbedder(name, weights_dir=settings.EMBEDDER_WEIGHTS_DIR)
    raise ValueError(f"Unknown embedder {name!r}")


def embedder_identity(name: str | None = None) -> tuple[str, int]:
    """(model name, dimension) of an embedder without loading it: the index writer needs
    only these, and should not hold a copy of the network in memory."""
    name = name or settings.EMBEDDER
    if name == "efficientnet_lite0":
        return lite0_model_name(settings.EMBEDDER_IMAGE_SIZE), LITE0_DIM
    if name in TORCHVISION_BACKBONES:
        return f"{name}-avg", TORCHVISION_BACKBONES[name][1]
    raise ValueError(f"Unknown embedder {name!r}")


def get_embedder(name: str | None = None) -> "Embedder":
    name = name or settings.EMBEDDER
    with _lock:
        if name not in _cache:
            _cache[name] = build_embedder(name)
        return _cache[name]


__all__ = ["build_embedder", "embedder_identity", "get_embedder"]
