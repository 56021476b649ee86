"""One embedder per model and process, loaded on first use and kept: a network costs
seconds to load and tens to hundreds of MB to hold."""

import os
import threading
from typing import TYPE_CHECKING

from .factory import build_embedder
from .registry import ModelRef, active_model

if TYPE_CHECKING:
    from .base import Embedder

_lock = threading.Lock()
_cache: dict[str, "Embedder"] = {}


def _cache_key(ref: ModelRef) -> str:
    """The model's name; for a model file, also its modification time: a file written again
    under the same name is another model."""
    if ref.weights:
        try:
            return f"{ref.name}:{os.stat(ref.weights).st_mtime_ns}"
        except OSError:
            pass
    return ref.name


def get_embedder(ref: ModelRef | None = None) -> "Embedder":
    """The embedder of `ref` (default: the active model), loaded once per process."""
    ref = ref or active_model()
    key = _cache_key(ref)
    with _lock:
        if key not in _cache:
            _cache[key] = build_embedder(ref)
        return _cache[key]
