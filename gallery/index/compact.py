"""Compact vectors for large indexes (`INDEX_COMPACT_DIMS`). hnswlib holds each vector projected
by a PCA learned on the gallery it serves (a few hundred numbers instead of 1,472: a fifth of the
memory, faster inserts and searches); the full vectors are kept beside it as float16 in a file
that every process maps read-only (one copy in the page cache, not one per process), and the
first candidates of every search (`vector_index.RERANK`) are re-ranked by them, so scores stay
the full vectors' cosines (the tiers' thresholds are set on those). bench/compact_vectors.py
measured the forms: unwhitened PCA to 256-d, re-ranked, keeps near-duplicate recall@1 and
raises CIFAR-10 mAP@1000 (0.402 -> 0.424); whitening lowers it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .files import atomic_write

PROJECTION_FILE = "projection.npz"
FULL_VECTORS_FILE = "vectors.f16"  # rows of float16, appended to (see FullVectors)
FULL_LABELS_FILE = "vector_labels.npy"  # int64: the label of each row, in file order
LEARN_SAMPLE = 50_000  # vectors a projection is learned on (a random sample of the gallery)


@dataclass(frozen=True)
class Projection:
    """The first principal directions of the vectors' second moment, not centred (no
    whitening); rows L2-normalised, so hnswlib's cosine ranks like the full vectors' on what
    they share. Centred, the projection dropped the mean's share of each cosine: on the
    product gallery, 24 of 696 edited copies had one of their full-vector top 10 outside the
    first 400 candidates (a copy found at 7 ranked 620th); uncentred, none outside the first 50.
    `mean` stays for projections saved centred."""

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
        values, basis = np.linalg.eigh((sample.T @ sample).astype(np.float64) / max(1, len(sample)))
        order = np.argsort(-values)[:dims]
        return cls(np.zeros(sample.shape[1], np.float32), basis[:, order].astype(np.float32))

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
    snapshot's rows mapped from its file, rows added since kept in memory until the next one.

    The file grows by appending: a snapshot writes at its end only the rows added since the last
    one (its cost is in proportion to the change, not to the index) and then, atomically, the
    label of every row in file order; a label's last row is its vector. Rows of deleted or
    replaced items are left until they are a third of the file, which is then written anew (as
    it is when the file on disk is not the one these rows came from, e.g. after a rebuild).
    Appending never touches the rows other processes have mapped."""

    def __init__(
        self,
        dim: int,
        file_labels: np.ndarray | None = None,
        rows: np.ndarray | None = None,
        origin: tuple[int, int, int] | None = None,
    ) -> None:
        self.dim = dim
        self._file_labels = file_labels if file_labels is not None else np.zeros(0, dtype=np.int64)
        self._rows = rows if rows is not None else np.zeros((0, dim), dtype=np.float16)
        self._origin = origin  # (device, inode, bytes) of the file the rows are mapped from
        order = np.argsort(self._file_labels, kind="stable")
        ordered = self._file_labels[order]
        last = np.ones(len(order), dtype=bool)
        last[:-1] = ordered[1:] != ordered[:-1]  # of equal labels, the later row
        self._labels, self._label_rows = ordered[last], order[last]
        self._added: dict[int, np.ndarray] = {}

    @classmethod
    def load(cls, directory: Path, dim: int) -> FullVectors:
        file_labels = np.load(directory / FULL_LABELS_FILE).astype(np.int64)
        path = directory / FULL_VECTORS_FILE
        expected = len(file_labels) * dim * 2
        st = path.stat()
        if st.st_size < expected:
            raise ValueError(f"{path} has {st.st_size} bytes, {expected} expected")
        rows = (
            np.memmap(path, dtype=np.float16, mode="r", shape=(len(file_labels), dim))
            if len(file_labels)
            else None
        )
        return cls(dim, file_labels, rows, (st.st_dev, st.st_ino, expected))

    def put(self, labels: list[int], vectors: np.ndarray) -> None:
        for label, row in zip(labels, np.asarray(vectors, dtype=np.float16).reshape(len(labels), self.dim)):
            self._added[int(label)] = row

    def rows_in_memory(self) -> dict[int, np.ndarray]:
        """The rows added since the snapshot (a new mapping; the rows are shared)."""
        return dict(self._added)

    def keep_newer(self, previous: FullVectors, written: dict[int, np.ndarray]) -> None:
        """Take `previous`'s in-memory rows that a snapshot holding `written` lacks (added or
        replaced after it was taken)."""
        for label, row in previous._added.items():
            if written.get(label) is not row:
                self._added[label] = row

    def get(self, labels: list[int] | np.ndarray) -> np.ndarray:
        """float32 rows of the labels, in their order (zeros for one never stored)."""
        wanted = np.asarray(labels, dtype=np.int64).reshape(-1)
        out = np.zeros((len(wanted), self.dim), dtype=np.float32)
        missing = list(range(len(wanted)))
        if self._added:  # rows since the snapshot (none in a process that just loaded one)
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
                rows = self._label_rows[pos[found]]
                order = np.argsort(rows)  # ascending file offsets: fewer page faults
                out[where[found][order]] = self._rows[rows[order]]
        return out

    def write(self, directory: Path, live: np.ndarray) -> int:
        """Write the snapshot's files for the `live` labels; returns the bytes of rows written."""
        live = np.unique(np.asarray(live, dtype=np.int64))
        path = directory / FULL_VECTORS_FILE
        added = np.array(sorted(self._added), dtype=np.int64)
        added = added[np.isin(added, live)]
        try:
            st = path.stat()
            ours = self._origin == (st.st_dev, st.st_ino, st.st_size)  # nobody else wrote it since
        except FileNotFoundError:
            ours = False
        if ours and 2 * (len(self._file_labels) + len(added)) <= 3 * len(live):
            with open(path, "r+b") as fh:
                fh.seek(0, 2)
                self._write_rows(fh, added)
                fh.flush()
                os.fsync(fh.fileno())
            file_labels, written = np.concatenate([self._file_labels, added]), len(added)
        else:
            atomic_write(path, lambda tmp: self._write_file(tmp, live))
            file_labels, written = live, len(live)

        def label_file(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, file_labels)

        atomic_write(directory / FULL_LABELS_FILE, label_file)
        return written * self.dim * 2

    def _write_rows(self, fh: BinaryIO, labels: np.ndarray) -> None:
        for start in range(0, len(labels), 20000):
            fh.write(self.get(labels[start : start + 20000]).astype(np.float16).tobytes())

    def _write_file(self, tmp: Path, labels: np.ndarray) -> None:
        with open(tmp, "wb") as fh:
            self._write_rows(fh, labels)
        if tmp.stat().st_size != len(labels) * self.dim * 2:
            raise OSError(f"{tmp} was not written whole")
