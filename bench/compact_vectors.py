"""Compact vectors, measured before they are built: the default embedder's 1472-d vectors
against PCA to 256 or 512 dimensions (centred, whitened with eigenvalue power a = 0, 0.5, 1;
learned on the gallery it serves), with and without an exact re-rank of the first candidates
by the full vectors, and float16 storage. In-process, whole-picture vectors only (no regions,
hashes or verification: what an index holds).

- PCA uncentred (the second moment's directions, as the app's `Projection` learns it).
- Near-duplicates: the 6,000 product photos as the gallery; 696 edited copies (the 29 kinds of
  bench/harness/edits.py x 2 strengths x 12) as queries: recall@1 and recall@10 (pixel-identical
  catalogue photos count as the same original). Re-rank: the first 50.
- Categories: CIFAR-10, 10,000 `train/` photos as the gallery, 1,000 `test/` photos as queries:
  mAP@1000 by class. Re-rank: the first 100.
- The app's own form (`gallery.index.compact`: its PCA, the first max(RERANK, 2 k) candidates
  re-ranked by the float16 full vectors).
- Memory per item of each form (in hnswlib; the app's form keeps 2 bytes per number beside it,
  in a file shared by every process).

    .venv/bin/python bench/compact_vectors.py
    .venv/bin/python bench/compact_vectors.py --cifar-gallery 2000 --cifar-queries 200 --per 4   # quick"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import random
import tempfile
import time
import zipfile

import harness as h
import numpy as np
from harness import edits
from PIL import Image

APP_DIMS = 256  # INDEX_COMPACT_DIMS's default
CIFAR = "cifar10-jpg.zip"
PRODUCTS = "fashion-products-6k.zip"


def pca(vectors: np.ndarray, dims: int, power: float, centred: bool = True):
    """The projection learned on `vectors`: centred (or not: the second moment's directions),
    the first `dims` components, each divided by its eigenvalue ** (power / 2); the result
    L2-normalised."""
    mean = vectors.mean(axis=0) if centred else np.zeros(vectors.shape[1], vectors.dtype)
    values, basis = np.linalg.eigh((vectors - mean).T @ (vectors - mean) / len(vectors))
    order = np.argsort(-values)[:dims]
    matrix = basis[:, order] / (np.maximum(values[order], 1e-9) ** (power / 2))

    def project(x: np.ndarray) -> np.ndarray:
        z = (x - mean) @ matrix
        return (z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32)

    return project


def ranked(gallery, queries, full_gallery, full_queries, depth: int, rerank: int) -> np.ndarray:
    """The first `depth` gallery rows per query; the first `rerank` re-ordered by the full vectors."""
    top = np.argsort(-(queries @ gallery.T), axis=1)[:, :depth]
    if rerank:
        head = top[:, :rerank]
        exact = np.einsum("qd,qkd->qk", full_queries, full_gallery[head])
        top = np.concatenate(
            [np.take_along_axis(head, np.argsort(-exact, axis=1), axis=1), top[:, rerank:]], axis=1
        )
    return top


def near_duplicate_recall(top: np.ndarray, truth: list[int], same: list[str]) -> tuple[float, float]:
    r1 = np.mean([same[t[0]] == same[i] for t, i in zip(top, truth)])
    r10 = np.mean([any(same[x] == same[i] for x in t[:10]) for t, i in zip(top, truth)])
    return round(float(r1), 4), round(float(r10), 4)


def mean_average_precision(top: np.ndarray, gallery_labels: np.ndarray, query_labels: np.ndarray) -> float:
    relevant = gallery_labels[top] == query_labels[:, None]
    precision = np.cumsum(relevant, axis=1) / np.arange(1, top.shape[1] + 1)
    hits = relevant.sum(axis=1)
    ap = np.where(hits > 0, (precision * relevant).sum(axis=1) / np.maximum(hits, 1), 0.0)
    return round(float(ap.mean()), 4)


def embed_all(embedder, pictures, gallery: bool) -> np.ndarray:
    out = []
    for start in range(0, len(pictures), 64):
        batch = pictures[start : start + 64]
        out.append(embedder.embed_gallery(batch) if gallery else embedder.embed(batch))
    return np.concatenate(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per", type=int, default=12, help="edited queries per kind and strength")
    parser.add_argument("--cifar-gallery", type=int, default=10000)
    parser.add_argument("--cifar-queries", type=int, default=1000)
    h.common_arguments(parser, redis_db=12)
    args = parser.parse_args(argv)
    products = h.require_dataset(args.datasets, PRODUCTS)
    cifar = h.require_dataset(args.datasets, CIFAR)
    os.environ.setdefault("VAR_DIR", tempfile.mkdtemp(prefix="bench-compact-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "searchsite.settings")
    import django

    django.setup()
    from gallery.embedders import copy_model, get_embedder
    from gallery.index.compact import Projection
    from gallery.index.vector_index import RERANK

    embedder = get_embedder(copy_model())
    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    with zipfile.ZipFile(products) as zf:
        photos = [Image.open(io.BytesIO(zf.read(n))).convert("RGB") for n in h.zip_image_names(products)]
    same = [hashlib.sha1(p.tobytes()).hexdigest() for p in photos]
    with zipfile.ZipFile(cifar) as zf:
        names = h.zip_image_names(cifar)
        train = rng.sample([n for n in names if n.startswith("train/")], args.cifar_gallery)
        test = rng.sample([n for n in names if n.startswith("test/")], args.cifar_queries)
        backgrounds = [Image.open(io.BytesIO(zf.read(n))).convert("RGB") for n in train[:50]]
        cifar_gallery = [Image.open(io.BytesIO(zf.read(n))).convert("RGB") for n in train]
        cifar_queries = [Image.open(io.BytesIO(zf.read(n))).convert("RGB") for n in test]
    gallery = embed_all(embedder, photos, gallery=True)
    edited, truth = [], []
    for kind in edits.TUNING_KINDS + edits.HELD_OUT_KINDS:
        for strength in edits.STRENGTHS:
            for i in rng.sample(range(len(photos)), args.per):
                data, _ = edits.apply(kind, strength, photos[i], rng, backgrounds).encode()
                edited.append(Image.open(io.BytesIO(data)).convert("RGB"))
                truth.append(i)
    queries = embed_all(embedder, edited, gallery=False)
    cg = embed_all(embedder, cifar_gallery, gallery=True)
    cq = embed_all(embedder, cifar_queries, gallery=False)
    cg_labels = np.array([n.split("/")[1] for n in train])
    cq_labels = np.array([n.split("/")[1] for n in test])
    h.log(
        f"Embedded {len(gallery)} + {len(queries)} + {len(cg)} + {len(cq)} in {time.perf_counter() - t0:.0f} s"
    )

    def measure(project_products, project_cifar, rerank: bool) -> dict:
        g, q = (
            (gallery, queries)
            if project_products is None
            else (project_products(gallery), project_products(queries))
        )
        c_g, c_q = (cg, cq) if project_cifar is None else (project_cifar(cg), project_cifar(cq))
        r1, r10 = near_duplicate_recall(ranked(g, q, gallery, queries, 50, 50 if rerank else 0), truth, same)
        m = mean_average_precision(ranked(c_g, c_q, cg, cq, 1000, 100 if rerank else 0), cg_labels, cq_labels)
        return {"neardup_recall@1": r1, "neardup_recall@10": r10, "cifar_map@1000": m}

    rows = {"full 1472-d float32": measure(None, None, False) | {"bytes_per_item": 1472 * 4}}
    half = lambda x: x.astype(np.float16).astype(np.float32)  # noqa: E731
    rows["full 1472-d float16"] = measure(half, half, False) | {"bytes_per_item": 1472 * 2}
    for dims in (256, 512):
        for power in (0.0, 0.5, 1.0):
            products_pca, cifar_pca = pca(gallery, dims, power), pca(cg, dims, power)
            for rerank in (False, True):
                name = f"PCA {dims}-d, whitening power {power}" + (", exact re-rank" if rerank else "")
                rows[name] = measure(products_pca, cifar_pca, rerank) | {"bytes_per_item": dims * 4}
        products_pca, cifar_pca = pca(gallery, dims, 0.0, centred=False), pca(cg, dims, 0.0, centred=False)
        for rerank in (False, True):
            name = f"PCA {dims}-d uncentred" + (", exact re-rank" if rerank else "")
            rows[name] = measure(products_pca, cifar_pca, rerank) | {"bytes_per_item": dims * 4}
    # What the app does (gallery.index.compact, VectorIndex.query): its Projection, the first
    # max(RERANK, 2 k) candidates re-ranked by the float16 full vectors.
    app_products, app_cifar = Projection.learn(gallery, APP_DIMS), Projection.learn(cg, APP_DIMS)
    g16, q16 = half(gallery), queries
    r1, r10 = near_duplicate_recall(
        ranked(
            app_products.apply(gallery),
            app_products.apply(queries),
            g16,
            q16,
            max(50, RERANK),
            max(RERANK, 20),
        ),
        truth,
        same,
    )
    fetch = min(len(cg), max(RERANK, 2 * 1000))  # the app asks for k = 1000 here
    m = mean_average_precision(
        ranked(app_cifar.apply(cg), app_cifar.apply(cq), half(cg), cq, fetch, fetch)[:, :1000],
        cg_labels,
        cq_labels,
    )
    rows[f"app: PCA {APP_DIMS}-d + float16 re-rank"] = {
        "neardup_recall@1": r1,
        "neardup_recall@10": r10,
        "cifar_map@1000": m,
        "bytes_per_item": APP_DIMS * 4,
    }
    baseline = rows["full 1472-d float32"]
    h.log(f"{'form':<48}{'nd r@1':>8}{'nd r@10':>9}{'mAP@1000':>10}{'bytes':>7}")
    for name, row in rows.items():
        keeps = all(
            row[k] >= baseline[k] - 1e-9 for k in ("neardup_recall@1", "neardup_recall@10", "cifar_map@1000")
        )
        h.log(
            f"{name:<48}{row['neardup_recall@1']:>8.3f}{row['neardup_recall@10']:>9.3f}"
            f"{row['cifar_map@1000']:>10.3f}{row['bytes_per_item']:>7}{'  keeps all' if keeps else ''}"
        )
    h.write_result(
        args.results,
        "compact_vectors",
        vars(args) | {"datasets": str(args.datasets), "results": str(args.results)},
        {"queries": len(queries), "forms": rows},
        full_size=args.cifar_gallery >= 10000,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
