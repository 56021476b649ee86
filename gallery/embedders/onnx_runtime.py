"""The networks' forward passes through ONNX Runtime: the same graph, exported from the torch
module (weights and all) once into `ONNX_DIR` and run by ORT's CPU kernels, which are several
times faster than eager PyTorch on small inputs (bench/embed_speed.py). Training and export
stay in PyTorch.

A graph is used only when its vectors agree with eager PyTorch's on a fixed probe batch
(`ONNX_TOLERANCE`, largest difference of the L2-normalised vectors); otherwise, or when
`INFERENCE=torch`, or when the export fails, the torch module runs as before and the log says
why. Exported files are named by a digest of the weights, so a retrained model is another
file; they are written beside and renamed into place (two processes may export at once).

Measured and not used (the default embedder's graph, 128 pixels, one thread, this machine):
static int8 (ORT `quantize_static`, QDQ, per channel, 200 product photos to calibrate) ran a
batch 1.8x faster, but its vectors moved (cosine to fp32 down to 0.87) and a gallery embedded
so lost edited copies (recall@1 by the vector alone 0.73 -> 0.69); OpenVINO 2026.4 on the
same graph gave the same vectors (3.6e-7) for 13-17 % less CPU per view in f32, and half the
CPU in bfloat16 with retrieval unchanged: an agreed graph now runs there (`openvino_runtime`),
ONNX Runtime when OpenVINO is off, missing or disagrees."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from django.conf import settings

from .onnx_query import GraphSessions, QueryPreprocessing, safe_name, write_manifest
from .openvino_runtime import openvino_run

logger = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor], np.ndarray]  # a batch (N x 3 x S x S) -> N x dim features

_lock = threading.Lock()


def weights_digest(module: torch.nn.Module) -> str:
    """A short digest of a module's parameters and buffers (names, shapes, values)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _torch_forward(module: torch.nn.Module) -> Forward:
    def run(x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            out: np.ndarray = module(x).float().numpy()
        return out

    return run


def _export(module: torch.nn.Module, path: Path, image_size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        example = torch.zeros(2, 3, image_size, image_size)
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            # (the caller may be in inference mode; the TorchScript exporter warns that it is
            # deprecated in favour of one that needs onnxscript, which torch 2.14 still ships it)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                module,
                (example,),
                tmp,
                dynamo=False,  # the TorchScript exporter: no onnxscript needed, fixed graph
                input_names=["pixels"],
                output_names=["features"],
                dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
                opset_version=17,
            )
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _normalised(v: np.ndarray) -> np.ndarray:
    flat = v.reshape(len(v), -1)
    out: np.ndarray = flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
    return out


def probe_batch(image_size: int, count: int = 4) -> torch.Tensor:
    """Fixed inputs the graph and the module must agree on (pixels in about [-1, 1])."""
    rng = np.random.default_rng(20241126)
    return torch.from_numpy(rng.uniform(-1.0, 1.0, (count, 3, image_size, image_size)).astype(np.float32))


def largest_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference of the L2-normalised vectors."""
    return float(np.abs(_normalised(a) - _normalised(b)).max())


def lowest_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The lowest cosine between two passes' vectors of the same inputs (whole rows)."""
    return float((_normalised(a) * _normalised(b)).sum(axis=1).min())


def batch_run_largest(threads: int) -> int:
    """Views per ORT run in a batch: small runs keep a run's activations in the caches. The
    default graph, 128 pixels, CPU per view: one thread 3.40 ms in runs of 4, 3.49 of 8, 3.93
    of 32 (two processes at once: 3.5 against 4.1); two threads, wall time per view 2.10 ms
    in runs of 8, 2.27 of 4 or 32, 2.51 of 96."""
    return 4 if threads <= 1 else 8


def fast_forward(
    module: torch.nn.Module,
    *,
    name: str,
    image_size: int,
    query: QueryPreprocessing | None = None,
    bf16: bool = False,
) -> tuple[Forward, str]:
    """The fastest forward pass of `module` that agrees with it, and what it is
    (`openvino (bf16|f32)`, `onnxruntime` or `torch`, with the reason). An agreed graph is
    recorded for torch-free queries (`onnx_query`) when `query` says how its query pixels are
    made. `bf16`: the model's retrieval was measured unchanged in bfloat16 (else OpenVINO
    runs it in f32 at most)."""
    module = module.eval()
    eager = _torch_forward(module)
    if settings.INFERENCE != "onnx":
        return eager, "torch (INFERENCE=torch)"
    try:
        import onnxruntime as ort  # only processes that embed load it
    except ImportError:
        return eager, "torch (onnxruntime is not installed)"
    path = Path(settings.ONNX_DIR) / f"{safe_name(name)}-{image_size}-{weights_digest(module)}.onnx"
    try:
        with _lock:
            if not path.exists():
                _export(module, path, image_size)
        threads = settings.TORCH_THREADS
        sessions = GraphSessions(ort, path, threads, largest=batch_run_largest(threads))
    except Exception as exc:  # an operator the exporter or ORT lacks: eager PyTorch serves
        logger.warning("%s runs in eager PyTorch: no ONNX graph (%s: %s)", name, type(exc).__name__, exc)
        return eager, f"torch (export failed: {type(exc).__name__})"

    def run(x: torch.Tensor) -> np.ndarray:
        return sessions.run(np.ascontiguousarray(x.numpy(), dtype=np.float32))

    probe = probe_batch(image_size)
    difference = max(largest_difference(run(batch), eager(batch)) for batch in (probe, probe[:1]))
    if difference > settings.ONNX_TOLERANCE:
        logger.warning(
            "%s runs in eager PyTorch: its ONNX graph differs by %.2g (tolerance %.2g)",
            name,
            difference,
            settings.ONNX_TOLERANCE,
        )
        return eager, f"torch (ONNX differs by {difference:.2g})"
    precision = settings.OPENVINO if bf16 or settings.OPENVINO == "off" else "f32"
    forward, openvino = _openvino_forward(path, name, probe, eager, precision) or (run, "")
    if query is not None:
        try:
            write_manifest(name, path, query, openvino)
        except OSError as exc:  # a read-only ONNX_DIR: queries keep needing torch
            logger.warning("%s: no manifest for torch-free queries (%s)", name, exc)
    return forward, f"openvino ({openvino})" if openvino else "onnxruntime"


def _openvino_forward(
    path: Path, name: str, probe: torch.Tensor, eager: Forward, precision: str
) -> tuple[Forward, str] | None:
    """The agreed graph on OpenVINO in `precision` (or off) and the precision it computes in,
    when it agrees with eager PyTorch: within `ONNX_TOLERANCE` in f32, cosine
    `OPENVINO_MIN_COSINE` in bf16."""
    if precision == "off":
        return None
    found = openvino_run(path, settings.TORCH_THREADS, precision)
    if found is None:
        return None
    ov_run, precision = found

    def run(x: torch.Tensor) -> np.ndarray:
        return ov_run(np.ascontiguousarray(x.numpy(), dtype=np.float32))

    pairs = [(run(batch), eager(batch)) for batch in (probe, probe[:1])]
    if precision == "f32":
        difference = max(largest_difference(ours, theirs) for ours, theirs in pairs)
        agrees, measure = difference <= settings.ONNX_TOLERANCE, f"differs by {difference:.2g}"
    else:
        cosine = min(lowest_cosine(ours, theirs) for ours, theirs in pairs)
        agrees, measure = cosine >= settings.OPENVINO_MIN_COSINE, f"cosine {cosine:.4f}"
    if not agrees:
        logger.warning("%s runs on ONNX Runtime: OpenVINO %s %s", name, precision, measure)
        return None
    return run, precision
