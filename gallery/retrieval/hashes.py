"""The copy channel's perceptual hashes: PDQ (Meta's open copy-detection hash, 256 bits) of
each stored image, and an in-memory index that finds every item within a Hamming radius of a
query hash by multi-index hashing (Norouzi et al., CVPR 2012), so a lookup costs the same at a
thousand items and at a million.

PDQ survives re-compression, resizing, grayscale, colour and tone changes, blur and overlays,
but not crops, rotation or reframing (the embedding channel covers those). Its dihedral
variants (mirrors, quarter turns) come from one computation.

Multi-index hashing: the 256 bits are cut into 16 chunks of 16 bits. Two hashes within
distance r < 32 share at least one chunk that differs in at most one bit (pigeonhole), so the
candidates are the items whose chunk equals one of the query chunk's 17 variants (itself and
its 16 one-bit flips), in any of the 16 chunks; each candidate's full distance is then
counted exactly. Each chunk's table is a sorted array searched with `np.searchsorted`."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pdqhash
from PIL import Image

HASH_BITS = 256
HASH_BYTES = HASH_BITS // 8
CHUNKS = 16  # 16-bit chunks: any distance below 32 shares a chunk within one bit
MAX_RADIUS = 2 * CHUNKS - 1
HASH_INPUT_SIDE = 128  # PDQ's own first step box-filters to 64x64: a larger input adds nothing


def _rgb_array(image: Image.Image) -> np.ndarray:
    """The picture at a fixed `HASH_INPUT_SIDE` square: PDQ box-filters whatever it gets to
    64x64 itself, so the aspect ratio changes nothing, but its filter on a 60x80 catalogue
    photo and on the same photo enlarged 3x gave hashes 12-30 bits apart; resampled to one
    size first (area averaging down, bicubic up), they are a few bits apart."""
    im = image.convert("RGB")
    side = HASH_INPUT_SIDE
    larger = im.width * im.height >= side * side
    im = im.resize((side, side), Image.Resampling.BOX if larger else Image.Resampling.BICUBIC)
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


def pdq_hash(image: Image.Image) -> tuple[bytes, int]:
    """(32-byte PDQ hash, quality 0-100). Quality under 50 means a flat picture whose hash
    says little."""
    bits, quality = pdqhash.compute(_rgb_array(image))
    return np.packbits(bits.astype(np.uint8)).tobytes(), int(quality)


def pdq_dihedral(image: Image.Image) -> tuple[np.ndarray, int]:
    """The 8 hashes of the picture, its mirrors and quarter turns (8 x 32 uint8), and quality."""
    hashes, qualities = pdqhash.compute_dihedral(_rgb_array(image))
    return np.stack([np.packbits(h.astype(np.uint8)) for h in hashes]), int(qualities)


def _chunks(codes: np.ndarray) -> np.ndarray:
    """n x 32 uint8 -> n x 16 uint16 (big-endian pairs: chunk i is bits 16i..16i+15)."""
    pairs = codes.reshape(len(codes), CHUNKS, 2).astype(np.uint16)
    result: np.ndarray = (pairs[:, :, 0] << 8) | pairs[:, :, 1]
    return result


_FLIPS = np.concatenate([[0], 1 << np.arange(16)]).astype(np.uint16)  # itself and its 1-bit flips


def hamming(codes: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Distances between each row of `codes` (n x 32 uint8) and one `query` (32 uint8)."""
    distances: np.ndarray = np.bitwise_count(codes ^ query).sum(axis=1, dtype=np.int32)
    return distances


@dataclass
class HashMatch:
    label: int
    distance: int
    variant: int  # which query hash matched (for dihedral queries: 0 = as is)


class HashIndex:
    """Items' PDQ hashes with multi-index lookup. Immutable once built: the index writer
    builds a new one with each saved version, readers load it with the vector index."""

    def __init__(self, labels: np.ndarray, codes: np.ndarray) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        self.codes = np.ascontiguousarray(
            np.asarray(codes, dtype=np.uint8).reshape(len(self.labels), HASH_BYTES)
        )
        chunks = _chunks(self.codes)
        order = np.argsort(chunks, axis=0, kind="stable")
        # Per chunk (a contiguous row each): the rows by chunk value, and those values.
        self._order = np.ascontiguousarray(order.T)
        self._sorted = np.ascontiguousarray(np.take_along_axis(chunks, order, axis=0).T)

    def __len__(self) -> int:
        return len(self.labels)

    @cached_property
    def _sorted_labels(self) -> np.ndarray:
        return np.sort(self.labels)

    def count_held(self, labels: np.ndarray) -> int:
        """How many of `labels` (distinct) this index holds: a binary search each, so a view's
        few thousand changes cost microseconds against a million items, not a pass over them."""
        if not len(labels) or not len(self):
            return 0
        held = self._sorted_labels
        pos = np.minimum(np.searchsorted(held, labels), len(held) - 1)
        return int(np.count_nonzero(held[pos] == labels))

    @cached_property
    def _rows(self) -> dict[int, int]:
        """label -> row (built once: uploads ask for one item's distance each)."""
        return {int(label): row for row, label in enumerate(self.labels)}

    def _candidates(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, query) pairs: each row whose chunk equals one of a query chunk's 17 variants,
        for any chunk, with the query it came from; a row may come more than once. Computed
        for all the queries at once (a Python loop per query, chunk and range cost a search
        30 ms at a million items)."""
        wanted = _chunks(queries)[:, :, None] ^ _FLIPS[None, None, :]  # q x 16 x 17
        size = len(self)
        starts, lengths = [], []
        for chunk in range(CHUNKS):
            values = wanted[:, chunk, :].ravel()
            table = self._sorted[chunk]
            left = np.searchsorted(table, values, side="left")
            starts.append(left + chunk * size)
            lengths.append(np.searchsorted(table, values, side="right") - left)
        start, length = np.concatenate(starts), np.concatenate(lengths)
        owner = np.tile(np.repeat(np.arange(len(queries)), len(_FLIPS)), CHUNKS)
        total = int(length.sum())
        if not total:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        # The ranges [start, start + length) of the flattened tables, end to end.
        first = np.cumsum(length) - length
        positions = np.repeat(start - first, length) + np.arange(total)
        return self._order.ravel()[positions], np.repeat(owner, length)

    @cached_property
    def _words(self) -> list[np.ndarray]:
        """The codes as four contiguous columns of 64-bit words (built once): a scan of one
        column at a time runs at memory speed (about 16 ms for a million items here)."""
        words = self.codes.view(np.uint64)
        return [np.ascontiguousarray(words[:, i]) for i in range(HASH_BYTES // 8)]

    def nearest(self, query: np.ndarray, count: int) -> list[HashMatch]:
        """The `count` items nearest to one query hash (32 uint8) at any distance, nearest
        first: an exact scan, for copies too changed for `within`'s radius (a tiny thumbnail,
        a sticker over the photo)."""
        if not len(self) or count <= 0:
            return []
        words = np.ascontiguousarray(np.asarray(query, dtype=np.uint8).reshape(HASH_BYTES)).view(np.uint64)
        distances = np.bitwise_count(self._words[0] ^ words[0]).astype(np.uint16)
        for column, word in zip(self._words[1:], words[1:]):
            distances += np.bitwise_count(column ^ word)
        count = min(count, len(self))
        kth = np.partition(distances, count - 1)[count - 1]
        rows = np.flatnonzero(distances <= kth)  # ties at the cut: the smallest labels, always
        rows = rows[np.lexsort((self.labels[rows], distances[rows]))][:count]
        return [HashMatch(int(self.labels[row]), int(distances[row]), 0) for row in rows]

    def within(self, queries: np.ndarray, radius: int) -> list[HashMatch]:
        """Every item within `radius` (< 32) of any of the query hashes (k x 32 uint8), each
        once with its smallest distance, nearest first."""
        if not len(self) or radius < 0:
            return []
        radius = min(radius, MAX_RADIUS)
        queries = np.asarray(queries, dtype=np.uint8).reshape(-1, HASH_BYTES)
        rows, variant = self._candidates(queries)
        # Tens of thousands of candidate rows at a million items: their distances from the
        # four 64-bit word columns (a gather of 8 bytes each) cost half of the rows' 32 bytes.
        query_words = np.ascontiguousarray(queries).view(np.uint64)
        distance = np.bitwise_count(self._words[0][rows] ^ query_words[variant, 0]).astype(np.int32)
        for column in range(1, HASH_BYTES // 8):
            distance += np.bitwise_count(self._words[column][rows] ^ query_words[variant, column])
        near = distance <= radius
        rows, variant, distance = rows[near], variant[near], distance[near]
        # Each item once: its smallest distance, and then the first query variant that has it.
        order = np.lexsort((variant, distance, rows))
        rows, variant, distance = rows[order], variant[order], distance[order]
        once = np.ones(len(rows), dtype=bool)
        once[1:] = rows[1:] != rows[:-1]
        found = [
            HashMatch(int(label), int(d), int(v))
            for label, d, v in zip(self.labels[rows[once]], distance[once], variant[once])
        ]
        return sorted(found, key=lambda m: (m.distance, m.label))

    def distance_to(self, labels: list[int], queries: np.ndarray) -> dict[int, int]:
        """The smallest distance of the given items' hashes to any of the query hashes (the
        items this index does not hold are left out)."""
        rows = [self._rows[label] for label in labels if label in self._rows]
        return smallest_distances(self.labels[rows], self.codes[rows], queries)


def smallest_distances(labels: np.ndarray, codes: np.ndarray, queries: np.ndarray) -> dict[int, int]:
    """label -> the smallest distance of its code (a row of `codes`) to any query hash."""
    if not len(labels):
        return {}
    best = np.min(
        [hamming(codes, q) for q in np.asarray(queries, dtype=np.uint8).reshape(-1, HASH_BYTES)], axis=0
    )
    return {int(label): int(d) for label, d in zip(labels, best)}


def merge_due(changed: int, size: int) -> bool:
    """Whether the changes kept beside a `HashIndex` (a `HashIndexView`'s) have grown enough
    to build its multi-index tables again: past a twentieth, and at least 2,000."""
    return changed > max(2000, size // 20)


class HashIndexView:
    """A built `HashIndex` plus the changes since it was built (a small `HashIndex` of the
    items added or changed, and the labels to leave out of the big one), answering as one
    index: building the multi-index tables again for every change would cost seconds at a
    million items."""

    def __init__(self, base: HashIndex, added: HashIndex, excluded: set[int], size: int) -> None:
        self.base = base
        self.added = added
        self.excluded = excluded
        self._size = size
        self._excluded = np.fromiter(excluded, dtype=np.int64, count=len(excluded))

    def __len__(self) -> int:
        return self._size

    def _kept(self, matches: list[HashMatch]) -> list[HashMatch]:
        return [m for m in matches if m.label not in self.excluded] if self.excluded else matches

    @cached_property
    def _base_rows(self) -> np.ndarray:
        return np.flatnonzero(~np.isin(self.base.labels, self._excluded))

    @property
    def labels(self) -> np.ndarray:
        return np.concatenate([self.base.labels[self._base_rows], self.added.labels])

    @property
    def codes(self) -> np.ndarray:
        return np.concatenate([self.base.codes[self._base_rows], self.added.codes])

    def nearest(self, query: np.ndarray, count: int) -> list[HashMatch]:
        """As `HashIndex.nearest`."""
        hidden = self.base.count_held(self._excluded)
        found = self._kept(self.base.nearest(query, count + hidden)) + self.added.nearest(query, count)
        return sorted(found, key=lambda m: (m.distance, m.label))[:count]

    def within(self, queries: np.ndarray, radius: int) -> list[HashMatch]:
        """As `HashIndex.within`."""
        found = self._kept(self.base.within(queries, radius)) + self.added.within(queries, radius)
        return sorted(found, key=lambda m: (m.distance, m.label))

    def distance_to(self, labels: list[int], queries: np.ndarray) -> dict[int, int]:
        """As `HashIndex.distance_to`."""
        found = {
            label: d
            for label, d in self.base.distance_to(labels, queries).items()
            if label not in self.excluded
        }
        found.update(self.added.distance_to(labels, queries))
        return found
