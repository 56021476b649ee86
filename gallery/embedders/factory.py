"""Builds the embedder of a model. Each family is imported only when asked for: the modules
behind them import torch (and timm or torchvision), which the index worker and the beat,
which use only the registry, should never load."""

from typing import TYPE_CHECKING

from django.conf import settings

from .details import LiteDetailEmbedder
from .registry import DETAIL_GRID, DETAIL_SHARE, ModelRef, copy_model

if TYPE_CHECKING:
    from .interface import Embedder


def build_embedder(ref: ModelRef) -> "Embedder":
    """With `TORCH_FREE_QUERIES` (the web), the model's agreed ONNX graph without torch when a
    worker has recorded one (`onnx_query`); else the torch embedder."""
    if settings.TORCH_FREE_QUERIES and ref.pooling != "details":
        from .onnx_query import query_embedder  # no torch

        found = query_embedder(ref.name, ref.weights or "", full=lambda: _with_torch(ref))
        if found is not None:
            return found  # type: ignore[no-any-return]
    return _with_torch(ref)


def _with_torch(ref: ModelRef) -> "Embedder":
    if ref.pooling == "details":
        from .cache import get_embedder  # cache imports this module

        whole = get_embedder(copy_model())  # the same network (or its torch-free graph): loaded once
        return LiteDetailEmbedder(ref.name, whole, share=DETAIL_SHARE, grid=DETAIL_GRID)
    if ref.backbone == "efficientnet_lite0":
        from .efficientnet_lite import EfficientNetLiteEmbedder  # torch + timm

        return EfficientNetLiteEmbedder(
            image_size=settings.EMBEDDER_IMAGE_SIZE, gallery_views=settings.EMBEDDER_GALLERY_VIEWS
        )
    if ref.backbone == "learned":
        from .learned import LearnedEmbedder  # torch + the networks of gallery.learning

        return LearnedEmbedder(ref.name, ref.weights)
    from .torchvision_backbones import TorchvisionEmbedder  # torch + torchvision

    return TorchvisionEmbedder(ref.backbone, weights_dir=settings.EMBEDDER_WEIGHTS_DIR, pooling=ref.pooling)
