"""Embedders: one small interface (`name`, `dim`, `embed(images)`), one module per family.

`get_embedder()` returns the configured embedder, loaded once per process under a lock."""

import threading

from django.conf import settings

from .base import Embedder

_lock = threading.Lock()
_cache: dict[str, Embedder] = {}


def build_embedder(name: str) -> Embedder:
    if name == "efficientnet_lite0":
        from .efficientnet_lite import EfficientNetLiteEmbedder

        return EfficientNetLiteEmbedder(image_size=settings.EMBEDDER_IMAGE_SIZE)
    from .torchvision_backbones import BACKBONES, TorchvisionEmbedder

    if name in BACKBONES:
        return TorchvisionEmbedder(name, weights_dir=settings.EMBEDDER_WEIGHTS_DIR)
    raise ValueError(f"Unknown embedder {name!r}")


def embedder_identity(name: str | None = None) -> tuple[str, int]:
    """(model name, dimension) of an embedder without loading it: the index writer needs
    only these, and should not hold a copy of the network in memory."""
    name = name or settings.EMBEDDER
    if name == "efficientnet_lite0":
        from .efficientnet_lite import EfficientNetLiteEmbedder

        return EfficientNetLiteEmbedder.model_name(settings.EMBEDDER_IMAGE_SIZE), EfficientNetLiteEmbedder.dim
    from .torchvision_backbones import BACKBONES

    if name in BACKBONES:
        return f"{name}-avg", BACKBONES[name][1]
    raise ValueError(f"Unknown embedder {name!r}")


def get_embedder(name: str | None = None) -> Embedder:
    name = name or settings.EMBEDDER
    with _lock:
        if name not in _cache:
            _cache[name] = build_embedder(name)
        return _cache[name]


__all__ = ["Embedder", "build_embedder", "embedder_identity", "get_embedder"]
