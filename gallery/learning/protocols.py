"""The evaluation protocols, run on any embedder (pretrained or trained here).

- `cifar10`: the `train/` part of the archive is the database, `test/` the queries (the
  hashing literature's protocol); vectors by `embed` for both; with a hash model, also the
  Hamming ranking of the packed codes, alone and re-ranked by cosine.
- `neardup`: a catalogue (every image of a folder or ZIP) embedded as gallery items, edited
  copies of some of them (`edits.EDIT_KINDS`, in turn) as queries; the original must be first."""

import io
import random
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from . import data as datasets
from .edits import EDIT_KINDS, apply_edit
from .evaluation import pack_codes, retrieval_metrics

if TYPE_CHECKING:  # the embedders import torch; these functions are handed one
    from ..embedders.interface import Embedder

Report = Callable[[dict[str, Any]], None]  # progress: {"stage", "done", "total", ...}


def _sample(images: datasets.LabelledImages, limit: int | None, seed: int) -> datasets.LabelledImages:
    if not limit or limit >= len(images):
        return images
    rng = np.random.default_rng(seed)
    return images.subset(np.sort(rng.choice(len(images), limit, replace=False)))


def embed_dataset(
    embedder: "Embedder",
    images: datasets.LabelledImages,
    *,
    report: Report | None = None,
    label: str = "",
    batch: int = 256,
) -> np.ndarray:
    out = np.zeros((len(images), embedder.dim), dtype=np.float32)
    started = time.monotonic()
    for start in range(0, len(images), batch):
        stop = min(len(images), start + batch)
        out[start:stop] = embedder.embed([images.open(i) for i in range(start, stop)])
        if report:
            rate = stop / max(1e-6, time.monotonic() - started)
            report(
                {"stage": f"embedding {label}", "done": stop, "total": len(images), "rate": round(rate, 1)}
            )
    return out


def cifar10(
    embedder: "Embedder",
    archive: str | Path,
    *,
    db_limit: int | None = None,
    query_limit: int | None = None,
    bits: int = 0,
    report: Report | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    started = time.monotonic()
    db = _sample(datasets.from_path(archive, split="train"), db_limit, seed)
    queries = _sample(datasets.from_path(archive, split="test"), query_limit, seed + 1)
    if db.classes != queries.classes:
        raise ValueError("train/ and test/ have different classes")
    db_vectors = embed_dataset(embedder, db, report=report, label="database")
    embed_started = time.monotonic()
    q_vectors = embed_dataset(embedder, queries, report=report, label="queries")
    embed_rate = len(queries) / max(1e-6, time.monotonic() - embed_started)
    if report:
        report({"stage": "ranking", "done": 0, "total": len(queries)})
    result = retrieval_metrics(
        q_vectors, queries.labels, db_vectors, db.labels, top=1000, classes=len(db.classes)
    )
    result["classes"] = db.classes
    if bits:
        q_codes, db_codes = pack_codes(q_vectors), pack_codes(db_vectors)
        for name, rerank in (("hamming", False), ("hamming_rerank", True)):
            codes = retrieval_metrics(
                q_vectors,
                queries.labels,
                db_vectors,
                db.labels,
                q_codes=q_codes,
                db_codes=db_codes,
                rerank=rerank,
                classes=len(db.classes),
                with_all=False,
            )
            result[name] = {k: codes[k] for k in ("map@1000", "precision@10")}
        result["bits"] = bits
    reconstruction_mse = getattr(embedder, "reconstruction_mse", None)  # a learned embedder's
    if reconstruction_mse:
        tests = [queries.open(i) for i in range(len(queries))]
        mse = reconstruction_mse(tests)
        if mse is not None:
            result["reconstruction_mse"] = round(mse, 5)
            # PCA with as many components as the code has floats, fitted on the database
            fit = [db.open(i) for i in range(0, len(db), max(1, len(db) // 10000))]
            pca = getattr(embedder, "pca_reconstruction_mse", lambda *_: None)(fit, tests)
            if pca is not None:
                result["pca_reconstruction_mse"] = round(pca, 5)
    result["query_embed_rate"] = round(embed_rate, 1)
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def neardup(
    embedder: "Embedder",
    archive: str | Path,
    *,
    catalogue_limit: int | None = None,
    queries: int = 500,
    report: Report | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    started = time.monotonic()
    catalogue = _sample(datasets.from_path(archive, split=""), catalogue_limit, seed)
    vectors = np.zeros((len(catalogue), embedder.dim), dtype=np.float32)
    for start in range(0, len(catalogue), 128):
        stop = min(len(catalogue), start + 128)
        vectors[start:stop] = embedder.embed_gallery([catalogue.open(i) for i in range(start, stop)])
        if report:
            report({"stage": "embedding catalogue", "done": stop, "total": len(catalogue)})
    picks = random.Random(seed).sample(range(len(catalogue)), min(queries, len(catalogue)))
    hits1, hits10 = 0, 0
    per_kind: dict[str, list[int]] = {}  # edit -> [queries, found first]
    archive_file = zipfile.ZipFile(archive) if zipfile.is_zipfile(archive) else None
    try:
        for n, i in enumerate(picks):
            key = catalogue.keys[i]
            raw = archive_file.read(key) if archive_file else Path(key).read_bytes()
            kind = EDIT_KINDS[n % len(EDIT_KINDS)]
            edited, _ = apply_edit(raw, kind)
            with Image.open(io.BytesIO(edited)) as im:
                q = embedder.embed([im.convert("RGB")])[0]
            ranked = np.argsort(-(vectors @ q))[:10]
            hits1 += int(ranked[0] == i)
            hits10 += int(i in ranked)
            stats = per_kind.setdefault(kind, [0, 0])
            stats[0] += 1
            stats[1] += int(ranked[0] == i)
            if report and n % 50 == 0:
                report({"stage": "queries", "done": n, "total": len(picks)})
    finally:
        if archive_file:
            archive_file.close()
    return {
        "recall@1": round(hits1 / len(picks), 4),
        "recall@10": round(hits10 / len(picks), 4),
        "queries": len(picks),
        "catalogue": len(catalogue),
        "recall@1_by_edit": {k: round(v[1] / v[0], 3) for k, v in per_kind.items()},
        "seconds": round(time.monotonic() - started, 1),
    }


PROTOCOLS = ("cifar10", "neardup")
