"""Hash models' binary codes for `VectorIndex.hamming_query`: a hash model's vector is the
normalised 2h - 1, so its signs are the bits. Built once from the index (hnswlib's `get_items`
costs about 0.1 ms per item), later changes kept apart and merged on the next search."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
Codes = tuple[np.ndarray, np.ndarray, np.ndarray]  # labels, packed sign bits, vectors


class SignCodes:
    """The live items' packed sign bits and vectors, kept up to date with the index's changes."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._codes: Codes | None = None
        self._added: dict[int, np.ndarray] = {}  # changes since the codes were built
        self._removed: set[int] = set()
        self._lock = threading.Lock()

    def added(self, labels: list[int], rows: np.ndarray) -> None:
        if self._codes is not None:
            for label, row in zip(labels, rows):
                self._added[label] = row

    def removed(self, label: int) -> None:
        self._added.pop(label, None)
        self._removed.add(label)

    def current(self, build: Callable[[], tuple[np.ndarray, np.ndarray]]) -> Codes:
        """The codes, built by `build()` -> (labels, vectors) the first time (call with the
        index's read lock held)."""
        with self._lock:  # searches merge one at a time
            if self._codes is None:
                labels, vectors = build()
                self._codes = (labels, np.packbits(vectors > 0, axis=1), vectors)
                self._added, self._removed = {}, set()
            elif self._added or self._removed:
                labels, codes, vectors = self._codes
                gone = np.fromiter(self._removed | set(self._added), dtype=np.int64)
                keep = ~np.isin(labels, gone)
                new_labels = np.fromiter(self._added, dtype=np.int64, count=len(self._added))
                new_vectors = np.asarray(list(self._added.values()), dtype=np.float32).reshape(
                    len(new_labels), self.dim
                )
                self._codes = (
                    np.concatenate([labels[keep], new_labels]),
                    np.concatenate([codes[keep], np.packbits(new_vectors > 0, axis=1)]),
                    np.concatenate([vectors[keep], new_vectors]),
                )
                self._added, self._removed = {}, set()
            return self._codes


def hamming_ranked(
    codes: Codes, vector: np.ndarray, k: int, allowed: set[int] | None, candidates: int
) -> list[tuple[int, float]]:
    """Every item ranked by Hamming distance of packed codes, the best `candidates` re-ranked
    by cosine."""
    labels, packed, vectors = codes
    if allowed is not None:
        keep = np.isin(labels, np.fromiter(allowed, dtype=np.int64, count=len(allowed)))
        labels, packed, vectors = labels[keep], packed[keep], vectors[keep]
    if not len(labels):
        return []
    query = np.asarray(vector, dtype=np.float32)
    distance = POPCOUNT[packed ^ np.packbits(query > 0)].sum(axis=1, dtype=np.int32)
    best = np.argsort(distance, kind="stable")[: max(k, candidates)]
    scores = vectors[best] @ query
    order = np.argsort(-scores, kind="stable")[:k]
    return [(int(labels[best[i]]), float(scores[i])) for i in order]
