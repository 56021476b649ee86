"""Queries embedded by OpenVINO or ONNX Runtime alone, without PyTorch: what a web process
needs. Importing torch and timm costs a process about 700 MB resident; the web only embeds
queries.

When a network's exported graph has passed the agreement check (`onnx_runtime.fast_forward`),
a manifest beside it (`ONNX_DIR/<model>.json`) records the graph and the query's preprocessing
(input size, normalisation, blur) and the runtime it agreed on (OpenVINO's precision, or ONNX
Runtime). A process with `TORCH_FREE_QUERIES` (the web: set by
`searchsite/gunicorn.conf.py`) builds its query embedders from the manifest: the same pixels
(`transforms.pixels`, `transforms.to_array`), the same graph, the same vectors. Without a
manifest yet (a fresh install, before a worker has embedded anything) it loads the torch
embedder, which writes one. Gallery vectors (several views per photo) stay with the torch
embedder, which this one loads only if asked for them."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from PIL import Image

from . import transforms
from .interface import Embedder
from .openvino_runtime import openvino_run

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueryPreprocessing:
    """How a network's query pixels are made (what `TorchEmbedder.embed` does before the net)."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    blur_radius: float
    dim: int
    weights_mtime_ns: int = 0  # the model file's, when the model is a file (a retrained one differs)


def safe_name(name: str) -> str:
    """A model name as part of a file name in ONNX_DIR."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def manifest_path(name: str) -> Path:
    return Path(settings.ONNX_DIR) / f"{safe_name(name)}.json"


def write_manifest(name: str, graph: Path, query: QueryPreprocessing, openvino: str = "") -> None:
    """Record an agreed graph for torch-free queries (written beside, then renamed), and the
    precision OpenVINO agreed to run it in (empty: ONNX Runtime runs it)."""
    path = manifest_path(name)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"graph": graph.name, "openvino": openvino, **asdict(query)}))
    os.replace(tmp, path)


def read_manifest(name: str, weights_mtime_ns: int = 0) -> tuple[Path, QueryPreprocessing, str] | None:
    """The agreed graph of `name`, its preprocessing and OpenVINO's precision (or empty),
    when there is one for these weights."""
    try:
        data = json.loads(manifest_path(name).read_text())
        graph = Path(settings.ONNX_DIR) / data.pop("graph")
        openvino = str(data.pop("openvino", ""))
        query = QueryPreprocessing(
            **{**data, "mean": tuple(data["mean"]), "std": tuple(data["std"])}  # JSON lists
        )
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if not graph.exists() or query.weights_mtime_ns != weights_mtime_ns:
        return None
    return graph, query, openvino


def session(ort: Any, path: Path, threads: int) -> Any:
    """An ORT session of a graph on `threads` threads that do not spin."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Threads that spin waiting for work after a run took a core from the rest of the
    # request (decoding, verification) and from the other processes: 9.5 ms per query and
    # the work after it twice as slow with spinning, 6.5 ms and no slowdown without; on the
    # calling thread alone, 6.0 ms.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# Images per run in a web process. ORT keeps, per session, an arena as large as the largest
# run it has made: after batches of 2 to 39 windows (region searches) one session of the
# default graph held 392 MB resident against 113 after single queries; at most 4 a run,
# 163 MB, and 40 windows took 90 ms against 92 in one run (one thread; the arena turned off
# instead kept 110 MB but a batch of 24 took 137 ms against 57). A web process after 300
# searches with different photos (8 threads): 424 MB with runs of up to 8 and two sessions,
# 330 with runs of up to 4, one session and MALLOC_ARENA_MAX=2 (`runapp`).
QUERY_RUN_LARGEST = 4


class GraphSessions:
    """One graph's ORT sessions: a query or two on the calling thread (a web process serves
    several at once, one per core), a batch on `threads` threads, at most `largest` images a
    run when given (the arena's size follows the largest run)."""

    def __init__(self, ort: Any, path: Path, threads: int, largest: int | None = None) -> None:
        self._single = session(ort, path, 1)
        # One thread for batches too (the web): the same session, one arena instead of two.
        self._batch = session(ort, path, threads) if threads > 1 else self._single
        self._largest = largest

    def run(self, x: np.ndarray) -> np.ndarray:
        step = self._largest or len(x) or 1
        outs = [
            (self._single if len(part) <= 2 else self._batch).run(None, {"pixels": part})[0]
            for part in (x[i : i + step] for i in range(0, len(x), step))
        ]
        return outs[0] if len(outs) == 1 else np.concatenate(outs)


class OnnxQueryEmbedder(Embedder):
    """A model's query vectors from its agreed ONNX graph, without torch."""

    def __init__(
        self,
        name: str,
        graph: Path,
        query: QueryPreprocessing,
        openvino: str,
        full: Callable[[], Embedder],
    ) -> None:
        self.name, self.dim, self.query = name, query.dim, query
        self.norm = transforms.Normalisation(query.mean, query.std)
        # The runtime the torch process agreed on, so that queries get the gallery's vectors.
        found = (
            openvino_run(graph, settings.TORCH_THREADS, openvino, largest=QUERY_RUN_LARGEST)
            if openvino
            else None
        )
        if found is not None:
            self._run, precision = found
            self.runtime = f"openvino ({precision}, without torch)"
        else:
            import onnxruntime as ort  # late: only processes that embed load it

            self._run = GraphSessions(ort, graph, settings.TORCH_THREADS, largest=QUERY_RUN_LARGEST).run
            self.runtime = "onnxruntime (without torch)"
        self._full_factory = full
        self._full: Embedder | None = None
        self._lock = threading.Lock()

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        q = self.query
        batch = np.stack([transforms.pixels(im, q.image_size, q.blur_radius) for im in images])
        x = transforms.to_array(batch, self.norm)
        out = self._run(x)
        out = out.reshape(len(x), -1).astype(np.float32)
        normalised: np.ndarray = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return normalised

    def embed_gallery(self, images: list[Image.Image]) -> np.ndarray:
        """Gallery vectors take the torch embedder's views (loaded on first use)."""
        with self._lock:
            if self._full is None:
                logger.info("%s: loading the torch embedder for gallery vectors", self.name)
                self._full = self._full_factory()
        return self._full.embed_gallery(images)


def query_embedder(name: str, weights: str, full: Callable[[], Embedder]) -> Any:
    """The torch-free query embedder of a model with an agreed graph, or None."""
    mtime = 0
    if weights:
        try:
            mtime = os.stat(weights).st_mtime_ns
        except OSError:
            return None
    found = read_manifest(name, mtime)
    if found is None:
        return None
    try:
        return OnnxQueryEmbedder(name, *found, full=full)
    except Exception as exc:  # a graph ORT cannot load: the torch embedder serves
        logger.warning("%s: torch-free queries unavailable (%s: %s)", name, type(exc).__name__, exc)
        return None
