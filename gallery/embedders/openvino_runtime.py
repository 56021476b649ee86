"""Batches of views through OpenVINO's CPU plugin, on the ONNX graph exported and agreed for
ONNX Runtime (`onnx_runtime`), in bfloat16 where the CPU computes it natively (AVX512-BF16,
AMX; elsewhere OpenVINO runs f32).

Measured on this machine (the default graph, 128 pixels, one thread, CPU per view): ONNX
Runtime 3.46 ms in runs of 4; OpenVINO f32 2.93 ms (vectors within 3e-7); OpenVINO bf16
1.66 ms. The bf16 vectors are within cosine 0.991 of fp32 on 600 edited product photos and
0.998 on 2,000 catalogue photos, and recall by the vector alone did not move (recall@1 0.752
both, recall@100 0.895 -> 0.897, whichever side of the search is bf16). The int8 graph that
was 1.8x faster moved vectors to cosine 0.87 and lost copies; bf16 keeps fp32's range.

bfloat16 only for a model whose retrieval was measured so (`TorchEmbedder.bf16`: the default
embedder); the others, trained models whose hash codes are signs that a small change flips,
run in f32. A compiled model is accepted only when its vectors agree with eager PyTorch's on
the probe batch (`onnx_runtime.fast_forward`): within `ONNX_TOLERANCE` in f32, cosine at
least `OPENVINO_MIN_COSINE` in bf16."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# Views per inference: one thread 1.62 ms a view in runs of 8, 1.66 of 4, 1.64 of 32.
RUN_LARGEST = 8

Run = Callable[[np.ndarray], np.ndarray]  # N x 3 x S x S float32 -> N x dim


def openvino_run(
    path: Path, threads: int, precision: str, largest: int = RUN_LARGEST
) -> tuple[Run, str] | None:
    """A forward pass of the graph at `path` on OpenVINO's CPU plugin, at most `largest`
    images an inference, and the precision it computes in; None when OpenVINO is not
    installed or cannot compile the graph."""
    try:
        import openvino as ov  # only processes that embed batches load it
    except ImportError:
        return None
    try:
        core = ov.Core()
        compiled = core.compile_model(
            core.read_model(str(path)),
            "CPU",
            {
                "INFERENCE_NUM_THREADS": max(1, threads),
                "INFERENCE_PRECISION_HINT": precision,
                "PERFORMANCE_HINT": "LATENCY",
                "NUM_STREAMS": 1,
                # Pinned threads would put every embedding process on the same cores.
                "ENABLE_CPU_PINNING": False,
            },
        )
        computed = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()  # "bf16", "f32"
    except Exception as exc:  # an operator the plugin lacks, an unknown option
        logger.warning("%s: OpenVINO cannot compile it (%s: %s)", path.name, type(exc).__name__, exc)
        return None
    return _PerThreadRequests(compiled, largest).run, computed


class _PerThreadRequests:
    """One inference request per calling thread (a request is not thread-safe)."""

    def __init__(self, compiled: Any, largest: int) -> None:
        self._compiled = compiled
        self._largest = largest
        self._local = threading.local()

    def run(self, x: np.ndarray) -> np.ndarray:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        parts = [
            request.infer({0: np.ascontiguousarray(x[i : i + self._largest], dtype=np.float32)})[0].copy()
            for i in range(0, len(x), self._largest)
        ]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
