"""Embedders: one small interface (`name`, `dim`, `embed(images)`), one module per family.

- `registry`: what the app knows about models without loading them (`ModelRef`, the active
  model, names and vector sizes); importable without torch.
- `factory`: `build_embedder(ref)`, importing a family's module (and torch) only when asked.
- `cache`: `get_embedder(ref)`, one loaded embedder per model and process.
- `transforms`: the preprocessing every network shares, pretrained or trained here.
- `base`, `efficientnet_lite`, `torchvision_backbones`, `learned`: the families.

Importing this package does not import torch."""

from .cache import get_embedder, loaded_embedders, torch_free_embedder
from .factory import build_embedder
from .registry import (
    ACTIVE_TTL_SECONDS,
    ModelRef,
    active_model,
    copy_model,
    default_model,
    detail_model,
    embedder_identity,
    forget_active_model,
    model_ref,
    pretrained_ref,
    remember_active_model,
    served_models,
)

__all__ = [
    "ACTIVE_TTL_SECONDS",
    "ModelRef",
    "active_model",
    "build_embedder",
    "copy_model",
    "default_model",
    "detail_model",
    "embedder_identity",
    "forget_active_model",
    "get_embedder",
    "loaded_embedders",
    "model_ref",
    "pretrained_ref",
    "remember_active_model",
    "served_models",
    "torch_free_embedder",
]
