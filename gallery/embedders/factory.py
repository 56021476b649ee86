"""Builds the embedder of a model. Each family is imported only when asked for: the modules
behind them import torch (and timm or torchvision), which the index worker and the beat,
which use only the registry, should never load."""

from typing import TYPE_CHECKING

from django.conf import settings

from .registry import DETAIL_GRID, DETAIL_SHARE, ModelRef, copy_model

if TYPE_CHECKING:
    from .base import Embedder


def build_embedder(ref: ModelRef) -> "Embedder":
    if ref.pooling == "details":
        from .cache import get_embedder  # cache imports this module
        from .efficientnet_lite import EfficientNetLiteEmbedder, LiteDetailEmbedder  # torch + timm

        whole = get_embedder(copy_model())  # the same network: loaded once
        assert isinstance(whole, EfficientNetLiteEmbedder)
        return LiteDetailEmbedder(ref.name, whole, share=DETAIL_SHARE, grid=DETAIL_GRID)
    if ref.backbone == "efficientnet_lite0":
        from .efficientnet_lite import EfficientNetLiteEmbedder  # torch + timm

        return EfficientNetLiteEmbedder(image_size=settings.EMBEDDER_IMAGE_SIZE)
    if ref.backbone == "learned":
        from .learned import LearnedEmbedder  # torch + the networks of gallery.learning

        return LearnedEmbedder(ref.name, ref.weights)
    from .torchvision_backbones import TorchvisionEmbedder  # torch + torchvision

    return TorchvisionEmbedder(ref.backbone, weights_dir=settings.EMBEDDER_WEIGHTS_DIR, pooling=ref.pooling)
