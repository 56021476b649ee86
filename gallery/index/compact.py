"""Compact vectors for large indexes (`INDEX_COMPACT_DIMS`). hnswlib holds each vector projected
by a PCA learned on the gallery it serves (a few hundred numbers instead of 1,472: a fifth of the
memory, faster inserts and searches); the full vectors are kept beside it as float16 in a file
that every process maps read-only (one copy in the page cache, not one per process), and the
first candidates of every search (`vector_index.RERANK`) are re-ranked by them, so scores stay
the full vectors' cosines (the tiers' thresholds are set on those). bench/compact_vectors.py
measured the forms: unwhitened PCA to 256-d, re-ranked, keeps near-duplicate recall@1 and
raises CIFAR-10 mAP@1000 (0.402 -> 0.424); whitening lowers it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .files import atomic_write

PROJECTION_FILE = "projection.npz"
FULL_VECTORS_FILE = "vectors.f16"  # rows of float16, in the order of FULL_LABELS_FILE
FULL_LABELS_FILE = "vector_labels.npy"  # sorted int64
LEARN_SAMPLE = 50_000  # vectors a projection is learned on (a random sample of the gallery)


@dataclass(frozen=True)
class Projection:
    """Centre, then the first principal components (no whitening); rows L2-normalised, so
    hnswlib's cosine ranks like the full vectors' on what they share."""

    mean: np.ndarray  # (dim,)
    matrix: np.ndarray  # (dim, dims)

    @property
    def dims(self) -> int:
        return int(self.matrix.shape[1])

    @classmethod
    def learn(cls, vectors: Sequence[np.ndarray] | np.ndarray, dims: int, *, seed: int = 0) -> Projection:
        """Learned on at most LEARN_SAMPLE of the vectors (rows), drawn at random."""
        picked: Sequence[int] = range(len(vectors))
        if len(vectors) > LEARN_SAMPLE:
            picked = sorted(np.random.default_rng(seed).choice(len(vectors), LEARN_SAMPLE, replace=False))
        sample = np.stack([np.asarray(vectors[i], dtype=np.float32) for i in picked])
        mean = sample.mean(axis=0, dtype=np.float64)
        centred = sample - mean.astype(np.float32)
        values, basis = np.linalg.eigh((centred.T @ centred).astype(np.float64) / max(1, len(sample) - 1))
        order = np.argsort(-values)[:dims]
        return cls(mean.astype(np.float32), basis[:, order].astype(np.float32))

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        z = (np.asarray(vectors, dtype=np.float32).reshape(-1, len(self.mean)) - self.mean) @ self.matrix
        out: np.ndarray = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
        return out.astype(np.float32)

    def write(self, path: Path) -> None:
        with open(path, "wb") as fh:
            np.savez(fh, mean=self.mean, matrix=self.matrix)

    @classmethod
    def read(cls, path: Path) -> Projection:
        with np.load(path) as saved:
            return cls(saved["mean"].astype(np.float32), saved["matrix"].astype(np.float32))


class FullVectors:
    """Each item's full vector as float16 (its cosines are within about 1e-3 of float32's): the
    snapshot's rows mapped from its file, rows added since kept in memory until the next
    snapshot. Rows of deleted items stay until then; the index never asks for them."""

    def __init__(self, dim: int, labels: np.ndarray | None = None, rows: np.ndarray | None = None) -> None:
        self.dim = dim
        self._labels = labels if labels is not None else np.zeros(0, dtype=np.int64)
        self._rows = rows if rows is not None else np.zeros((0, dim), dtype=np.float16)
        self._added: dict[int, np.ndarray] = {}

    @classmethod
    def load(cls, directory: Path, dim: int) -> FullVectors:
        labels = np.load(directory / FULL_LABELS_FILE)
        expected = len(labels) * dim * 2
        size = (directory / FULL_VECTORS_FILE).stat().st_size
        if size != expected:
            raise ValueError(f"{directory / FULL_VECTORS_FILE} has {size} bytes, {expected} expected")
        rows = (
            np.memmap(directory / FULL_VECTORS_FILE, dtype=np.float16, mode="r", shape=(len(labels), dim))
            if len(labels)
            else None
        )
        return cls(dim, labels.astype(np.int64), rows)

    def put(self, labels: list[int], vectors: np.ndarray) -> None:
        for label, row in zip(labels, np.asarray(vectors, dtype=np.float16).reshape(len(labels), self.dim)):
            self._added[int(label)] = row

    def get(self, labels: list[int] | np.ndarray) -> np.ndarray:
        """float32 rows of the labels, in their order (zeros for one never stored)."""
        wanted = np.asarray(labels, dtype=np.int64).reshape(-1)
        out = np.zeros((len(wanted), self.dim), dtype=np.float32)
        missing = []
        for i, label in enumerate(wanted.tolist()):
            row = self._added.get(label)
            if row is not None:
                out[i] = row
            else:
                missing.append(i)
        if missing and len(self._labels):
            where = np.asarray(missing)
            pos = np.minimum(np.searchsorted(self._labels, wanted[where]), len(self._labels) - 1)
            found = self._labels[pos] == wanted[where]
            if found.any():
                order = np.argsort(pos[found])  # ascending file offsets: fewer page faults
                out[where[found][order]] = self._rows[pos[found][order]]
        return out

    def write(self, directory: Path, live: np.ndarray) -> int:
        """Write the rows of the `live` labels as the snapshot's files; returns the bytes."""
        labels = np.unique(np.asarray(live, dtype=np.int64))

        def rows(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                for start in range(0, len(labels), 20000):
                    fh.write(self.get(labels[start : start + 20000]).astype(np.float16).tobytes())
            if tmp.stat().st_size != len(labels) * self.dim * 2:
                raise OSError(f"{tmp} was not written whole")

        atomic_write(directory / FULL_VECTORS_FILE, rows)

        def label_file(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, labels)

        atomic_write(directory / FULL_LABELS_FILE, label_file)
        return len(labels) * self.dim * 2
