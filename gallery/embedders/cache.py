"""One embedder per model and process, loaded on first use and kept while the model is
served: a network costs seconds to load and tens to hundreds of MB to hold. Loading another
model, or the next use after a switch, lets go of those no longer served."""

import os
import threading
from typing import TYPE_CHECKING

from .factory import build_embedder
from .registry import ModelRef, active_model, served_models

if TYPE_CHECKING:
    from .interface import Embedder

_lock = threading.RLock()  # re-entered: a detail embedder is built on the copy model's
_cache: dict[str, tuple[str, "Embedder"]] = {}  # model name -> (cache key, embedder)
_torch_free: tuple[str, "Embedder"] | None = None  # (cache key, embedder): `torch_free_embedder`


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
        if _cache and (len(_cache) > 1 or ref.name not in _cache):
            # Another model than the one held: let go of those no longer served (asks the
            # database which are; a lone model in use never does).
            try:
                keep = {served.name for served in served_models()} | {ref.name}
            except Exception:  # no database here (a script, a check): keep everything
                keep = set(_cache) | {ref.name}
            for name in [name for name in _cache if name not in keep]:
                del _cache[name]
        held = _cache.get(ref.name)
        if held is not None and held[0] == key:
            return held[1]
        embedder = build_embedder(ref)
        _cache[ref.name] = (key, embedder)
        return embedder


def torch_free_embedder(ref: ModelRef) -> "Embedder | None":
    """The model's query embedder from its agreed ONNX graph (`onnx_query`: a worker records
    it when it loads the model), or None while there is none: for a process that must not
    load torch (the index writer, for its notes of uploaded copies). One per process, like
    `get_embedder`'s; another model's is let go."""
    from .onnx_query import query_embedder  # onnxruntime, no torch

    global _torch_free
    key = _cache_key(ref)
    with _lock:
        if _torch_free is not None and _torch_free[0] == key:
            return _torch_free[1]
        found = query_embedder(ref.name, ref.weights or "", full=lambda: build_embedder(ref))
        _torch_free = (key, found) if found is not None else None
        return found  # type: ignore[no-any-return]


def loaded_embedders() -> list[str]:
    """The models whose embedder this process holds."""
    return sorted(_cache)
