"""Embedding speed: eager PyTorch and the optimised paths (ONNX Runtime: `OPENVINO=off`; and
OpenVINO, the default: bf16 for the default embedder, f32 for trained models) side by side in
one run, for each model the app serves: the default embedder (a query's vector, and a
gallery item's views, `EMBEDDER_GALLERY_VIEWS`), the copy model's detail views, and one network
of each learned kind
(random weights: speed does not depend on them; a 48-bit hash head where the kind learns one).

For each: images per second at batch 1 and batch 32, milliseconds per query (batch 1, p50), and
the largest difference of the vectors (and their lowest cosine) between eager PyTorch and each
optimised path on the same photos (product photos
of fashion-products-6k.zip). In-process, TORCH_THREADS threads (the workers' setting).

    .venv/bin/python bench/embed_speed.py
    .venv/bin/python bench/embed_speed.py --seconds 2 --models default,metric"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import harness as h
import numpy as np

DATASET = "fashion-products-6k.zip"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="time per measurement")
    parser.add_argument("--models", default="", help="comma-separated (default: all)")
    h.common_arguments(parser, redis_db=9)
    return parser.parse_args(argv)


def photos(datasets: Path, count: int = 64) -> list:
    from PIL import Image

    path = h.require_dataset(datasets, DATASET)
    names = h.zip_image_names(path)[:count]
    with zipfile.ZipFile(path) as zf:
        return [Image.open(io.BytesIO(zf.read(n))).convert("RGB") for n in names]


def learned_model_files(folder: Path) -> dict[str, Path]:
    """One model file per learned kind, with random weights."""
    from gallery.learning.model_io import save_model
    from gallery.learning.networks import build_network
    from gallery.learning.spec import BITS_KINDS, TRAINED_KINDS, make_spec

    files = {}
    for kind in TRAINED_KINDS:
        spec = make_spec(kind, bits=48 if kind in BITS_KINDS else None)
        spec["classes"] = [f"class-{i}" for i in range(10)]
        net = build_network(spec.copy(), pretrained=False).eval()
        files[kind] = folder / f"{kind}.pt"
        save_model(files[kind], net, spec, {})
    return files


def build(name: str, files: dict[str, Path]):
    """(embedder, how it embeds) of a model under the current INFERENCE setting."""
    from django.conf import settings

    from gallery.embedders.details import LiteDetailEmbedder
    from gallery.embedders.efficientnet_lite import EfficientNetLiteEmbedder
    from gallery.embedders.learned import LearnedEmbedder
    from gallery.embedders.registry import DETAIL_GRID, DETAIL_SHARE

    if name == "default" or name.startswith(("default gallery", "details")):
        whole = EfficientNetLiteEmbedder(gallery_views=settings.EMBEDDER_GALLERY_VIEWS)
        if name == "default":
            return whole, whole.embed
        if name.startswith("default gallery"):
            return whole, whole.embed_gallery
        details = LiteDetailEmbedder("details", whole, share=DETAIL_SHARE, grid=DETAIL_GRID)
        return whole, details.embed_gallery
    embedder = LearnedEmbedder(name, files[name])
    return embedder, embedder.embed


# (key, INFERENCE, OPENVINO): eager PyTorch, ONNX Runtime, OpenVINO at the app's precision.
RUNTIMES = (("torch", "torch", "off"), ("onnx", "onnx", "off"), ("openvino", "onnx", "bf16"))


def measure(embed, pictures: list, batch: int, seconds: float) -> dict:
    embed(pictures[:batch])  # warm-up (the first ONNX run allocates)
    times = []
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or len(times) < 3:
        t0 = time.perf_counter()
        embed(pictures[:batch])
        times.append(time.perf_counter() - t0)
        done += batch
    elapsed = sum(times)
    return {"img_per_s": round(done / elapsed, 1), "ms_p50": round(statistics.median(times) * 1000, 2)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "searchsite.settings")
    tmp = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    os.environ["VAR_DIR"] = str(tmp)
    import django

    django.setup()
    from django.conf import settings

    settings.ONNX_DIR = tmp / "onnx"
    from gallery.embedders.onnx_runtime import lowest_cosine

    pictures = photos(args.datasets)
    files = learned_model_files(tmp)
    views = settings.EMBEDDER_GALLERY_VIEWS
    names = [
        "default",
        f"default gallery ({views} view{'s' if views > 1 else ''})",
        "details (4 views)",
        *files,
    ]
    if args.models:
        wanted = args.models.split(",")
        names = [n for n in names if n.split(" ")[0] in wanted or n in wanted]
    figures: dict[str, dict] = {}
    for name in names:
        row: dict[str, object] = {}
        vectors = {}
        for runtime, inference, openvino in RUNTIMES:
            settings.INFERENCE, settings.OPENVINO = inference, openvino
            embedder, embed = build(name, files)
            vectors[runtime] = embed(pictures[:32])
            row[f"{runtime}_runtime"] = getattr(embedder, "runtime", runtime)
            for batch in (1, 32):
                row[f"{runtime}_batch{batch}"] = measure(embed, pictures, batch, args.seconds)
        for runtime in ("onnx", "openvino"):
            prefix = "" if runtime == "onnx" else "openvino_"
            row[f"{prefix}max_vector_difference"] = float(np.abs(vectors[runtime] - vectors["torch"]).max())
            row[f"{prefix}lowest_cosine"] = round(lowest_cosine(vectors[runtime], vectors["torch"]), 5)
            for batch in (1, 32):
                eager = row[f"torch_batch{batch}"]["img_per_s"]  # type: ignore[index]
                fast = row[f"{runtime}_batch{batch}"]["img_per_s"]  # type: ignore[index]
                row[f"{prefix}speedup_batch{batch}"] = round(fast / eager, 2)
        figures[name] = row
        h.log(
            f"{name:28s} batch 1: torch {row['torch_batch1']['ms_p50']:7.2f} ms, "  # type: ignore[index]
            f"onnx {row['onnx_batch1']['ms_p50']:7.2f} ms ({row['speedup_batch1']}x), "  # type: ignore[index]
            f"openvino {row['openvino_batch1']['ms_p50']:7.2f} ms ({row['openvino_speedup_batch1']}x) | "  # type: ignore[index]
            f"batch 32: torch {row['torch_batch32']['img_per_s']:6.1f} img/s, "  # type: ignore[index]
            f"onnx {row['onnx_batch32']['img_per_s']:6.1f} ({row['speedup_batch32']}x), "  # type: ignore[index]
            f"openvino {row['openvino_batch32']['img_per_s']:6.1f} ({row['openvino_speedup_batch32']}x) | "  # type: ignore[index]
            f"max diff {row['max_vector_difference']:.1e} / {row['openvino_max_vector_difference']:.1e}, "
            f"lowest cosine {row['openvino_lowest_cosine']} [{row['openvino_runtime']}]"
        )
    h.write_result(
        h.RESULTS_FILE,
        "embed_speed",
        {"seconds": args.seconds, "torch_threads": settings.TORCH_THREADS, "models": names},
        figures,
        full_size=not args.models,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
