"""The hnswlib (cosine) index: one writer, many readers, atomic saves.

Files in INDEX_DIR: `index.bin` (hnswlib) and `meta.json` (model, dim, count, version).
Both are replaced atomically (temporary file, fsync, rename, fsync of the folder), so a reader
never sees half a file. Writers hold an exclusive `flock` on `write.lock`, so the Celery index
worker and `manage.py rebuild_index` can never write at the same time. Readers (web processes)
reload when `meta.json` changes; they never query an index that is being written, because the
writer works on its own copy in memory.

hnswlib traps handled here: `ef` is not saved (set after every load); adding past capacity
raises (grow first); k larger than the live count raises (clamp and retry); re-adding a label
marked deleted silently un-deletes it (callers check the database first); `save_index` does not
report a failed write (a full disk leaves a truncated file), so every written file is loaded
back and checked before it replaces the last good one, and meta.json records its size.
A reader that cannot load a newer version keeps serving the one it has and says so
(`on_unusable`: the app then asks the writer to rebuild from the database)."""

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import hnswlib
import numpy as np

from .retrieval.hashes import HASH_BYTES, HashIndex

INDEX_FILE = "index.bin"
HASHES_FILE = "hashes.npz"  # perceptual hashes of the items that have one (the copy index)
META_FILE = "meta.json"
LOCK_FILE = "write.lock"
MIN_CAPACITY = 1024
logger = logging.getLogger(__name__)
POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


@dataclass
class IndexMeta:
    model: str
    dim: int
    count: int = 0  # live (not deleted) items
    capacity: int = MIN_CAPACITY
    version: int = 0
    deleted: list[int] = field(default_factory=list)  # labels marked deleted in index.bin
    index_bytes: int = 0  # size of the index.bin written with this version (0: not recorded)

    @classmethod
    def read(cls, directory: Path) -> "IndexMeta | None":
        try:
            return cls(**json.loads((directory / META_FILE).read_text()))
        except (FileNotFoundError, json.JSONDecodeError, TypeError, UnicodeDecodeError):
            return None


class IndexUnusable(RuntimeError):
    """The files on disk cannot be loaded (truncated, corrupt, or not matching meta.json)."""


class IndexWriteFailed(OSError):
    """What was written could not be read back: the last good version stays installed."""


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


class VectorIndex:
    """An in-memory hnswlib index plus the bookkeeping hnswlib lacks (live count, deletes)."""

    def __init__(self, meta: IndexMeta, hnsw: hnswlib.Index, ef: int) -> None:
        self.meta = meta
        self.hnsw = hnsw
        self.ef = ef
        self._deleted = set(meta.deleted)
        self._hashes: dict[int, bytes] = {}  # label -> PDQ hash
        self._hash_index: HashIndex | None = None
        # (labels, packed sign bits, vectors), for hamming_query
        self._codes: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        hnsw.set_ef(ef)  # not persisted by hnswlib: set after every load

    @classmethod
    def create(
        cls,
        model: str,
        dim: int,
        *,
        capacity: int = MIN_CAPACITY,
        m: int = 16,
        ef_construction: int = 200,
        ef: int = 128,
    ) -> "VectorIndex":
        hnsw = hnswlib.Index(space="cosine", dim=dim)
        hnsw.init_index(
            max_elements=capacity, M=m, ef_construction=ef_construction, allow_replace_deleted=False
        )
        return cls(IndexMeta(model=model, dim=dim, capacity=capacity), hnsw, ef)

    @classmethod
    def load(cls, directory: Path, *, ef: int = 128) -> "VectorIndex | None":
        """The saved index, or None when there is none. Raises `IndexUnusable` when there
        are files that cannot be loaded (meta.json unreadable, index.bin truncated...)."""
        meta = IndexMeta.read(directory)
        if meta is None:
            if (directory / INDEX_FILE).exists():
                raise IndexUnusable(f"{directory / META_FILE} is missing or unreadable")
            return None
        path = directory / INDEX_FILE
        try:
            size = path.stat().st_size
            if meta.index_bytes and size != meta.index_bytes:
                raise IndexUnusable(
                    f"{path} has {size} bytes, version {meta.version} wrote {meta.index_bytes}"
                )
            hnsw = _load_hnsw(path, meta.dim, meta.capacity)
            index = cls(meta, hnsw, ef)
            if (directory / HASHES_FILE).exists():
                index._hashes = _read_hashes(directory / HASHES_FILE)
        except IndexUnusable:
            raise
        except (OSError, RuntimeError, ValueError, KeyError, EOFError, MemoryError) as exc:
            raise IndexUnusable(f"{directory} cannot be loaded: {exc}") from exc
        return index

    def __len__(self) -> int:
        return self.meta.count

    def labels(self) -> set[int]:
        """Live labels."""
        return set(self.hnsw.get_ids_list()) - self._deleted

    def add(self, labels: list[int], vectors: np.ndarray, hashes: list[bytes | None] | None = None) -> None:
        """Add or replace items (and their perceptual hashes, when given). The caller has
        checked in the database that they are visible (re-adding a deleted label makes it
        live again)."""
        if not labels:
            return
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(labels), self.meta.dim)
        existing = set(self.hnsw.get_ids_list())
        new = {int(x) for x in labels} - existing
        needed = self.hnsw.get_current_count() + len(new)
        if needed > self.hnsw.get_max_elements():
            self.hnsw.resize_index(max(needed, 2 * self.hnsw.get_max_elements()))
        self.hnsw.add_items(vectors, np.asarray(labels, dtype=np.int64))
        self._deleted -= {int(x) for x in labels}
        for label, code in zip(labels, hashes or []):
            if code:
                self._hashes[int(label)] = bytes(code)
        self._sync_meta()

    def _sync_meta(self) -> None:
        self._codes = None  # the contents changed: binary codes are built again when asked
        self._hash_index = None
        self.meta.capacity = self.hnsw.get_max_elements()
        self.meta.count = self.hnsw.get_current_count() - len(self._deleted)
        self.meta.deleted = sorted(self._deleted)

    def remove(self, labels: list[int]) -> int:
        """Mark items deleted (unknown or already deleted labels are ignored)."""
        removed = 0
        for label in labels:
            label = int(label)
            if label in self._deleted:
                continue
            try:
                self.hnsw.mark_deleted(label)
            except RuntimeError:
                continue  # not in the index
            self._deleted.add(label)
            self._hashes.pop(label, None)
            removed += 1
        self._sync_meta()
        return removed

    def vector(self, label: int) -> np.ndarray | None:
        if label in self._deleted:
            return None
        try:
            return np.asarray(self.hnsw.get_items([label])[0], dtype=np.float32)
        except RuntimeError:
            return None

    def query(self, vector: np.ndarray, k: int, allowed: set[int] | None = None) -> list[tuple[int, float]]:
        """The k nearest live items as (label, cosine similarity), best first. `k` is clamped
        to what the index (or the `allowed` subset) holds."""
        limit = self.meta.count if allowed is None else min(self.meta.count, len(allowed))
        k = min(k, limit)
        if k <= 0:
            return []
        flt = None if allowed is None else (lambda label: label in allowed)
        query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        ef = max(self.ef, k)
        while True:
            self.hnsw.set_ef(ef)
            try:
                labels, distances = self.hnsw.knn_query(query, k=k, filter=flt)
                break
            except RuntimeError:
                # Fewer than k reachable: widen the search, then ask for fewer.
                if ef < 4 * max(self.meta.capacity, 1) and ef < 4096:
                    ef *= 4
                elif k > 1:
                    k = max(1, k // 2)
                else:
                    return []
            finally:
                self.hnsw.set_ef(self.ef)
        return [(int(label), float(1.0 - d)) for label, d in zip(labels[0], distances[0])]

    def neighbours(self, labels: list[int], k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest items of items already in the index (themselves included), as
        arrays of labels and cosine similarities, one row per label."""
        vectors = np.asarray(self.hnsw.get_items(labels), dtype=np.float32)
        found, distances = self.hnsw.knn_query(vectors, k=k)
        return found.astype(np.int64), 1.0 - distances

    def hamming_query(
        self, vector: np.ndarray, k: int, allowed: set[int] | None = None, candidates: int = 200
    ) -> list[tuple[int, float]]:
        """Binary-code search for hash models (vector = normalised 2h - 1, so its signs are
        the bits): every live item ranked by Hamming distance of packed codes, the best
        `candidates` re-ranked by cosine. Codes are built once per loaded index."""
        if self._codes is None:
            labels = np.array(sorted(self.labels()), dtype=np.int64)
            vectors = (
                np.asarray(self.hnsw.get_items(labels), dtype=np.float32)
                if len(labels)
                else np.zeros((0, self.meta.dim), dtype=np.float32)
            )
            self._codes = (labels, np.packbits(vectors > 0, axis=1), vectors)
        labels, codes, vectors = self._codes
        if allowed is not None:
            keep = np.isin(labels, np.fromiter(allowed, dtype=np.int64, count=len(allowed)))
            labels, codes, vectors = labels[keep], codes[keep], vectors[keep]
        if not len(labels):
            return []
        query = np.asarray(vector, dtype=np.float32)
        distance = POPCOUNT[codes ^ np.packbits(query > 0)].sum(axis=1, dtype=np.int32)
        best = np.argsort(distance, kind="stable")[: max(k, candidates)]
        scores = vectors[best] @ query
        order = np.argsort(-scores, kind="stable")[:k]
        return [(int(labels[best[i]]), float(scores[i])) for i in order]

    def hash_index(self) -> HashIndex:
        """The live items' perceptual hashes, searchable by Hamming distance (built once per
        loaded version)."""
        if self._hash_index is None:
            self._hash_index = HashIndex(*self._hash_arrays())
        return self._hash_index

    def _hash_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        labels = np.array(sorted(self._hashes), dtype=np.int64)
        codes = np.frombuffer(b"".join(self._hashes[int(label)] for label in labels), dtype=np.uint8)
        return labels, codes.reshape(len(labels), HASH_BYTES)

    def _write_hashes(self, path: Path) -> None:
        labels, codes = self._hash_arrays()
        with open(path, "wb") as fh:
            np.savez(fh, labels=labels, codes=codes)
        try:
            if len(_read_hashes(path)) != len(labels):
                raise ValueError("fewer hashes than written")
        except (OSError, ValueError, KeyError, EOFError) as exc:
            raise IndexWriteFailed(f"the hashes written to {path} cannot be read back: {exc}") from exc

    def _write_hnsw(self, path: Path) -> None:
        """hnswlib's save, then a load of what it wrote: the same number of items must come back
        (it reports no failed write). Costs a second load of the file, about 1 s per 200,000
        items."""
        self.hnsw.save_index(str(path))
        try:
            written = _load_hnsw(path, self.meta.dim, self.hnsw.get_max_elements()).get_current_count()
        except (OSError, RuntimeError, ValueError, MemoryError) as exc:
            raise IndexWriteFailed(f"the index written to {path} cannot be read back: {exc}") from exc
        if written != self.hnsw.get_current_count():
            raise IndexWriteFailed(
                f"{path} holds {written} items, {self.hnsw.get_current_count()} were written"
            )
        self.meta.index_bytes = path.stat().st_size

    def save(self, directory: Path) -> None:
        """Writes a new version; raises `IndexWriteFailed` (leaving the last good version in
        place) when a file cannot be read back."""
        directory.mkdir(parents=True, exist_ok=True)
        self.meta.version += 1
        self.meta.capacity = self.hnsw.get_max_elements()
        _atomic_write(directory / INDEX_FILE, self._write_hnsw)
        if self._hashes:
            _atomic_write(directory / HASHES_FILE, self._write_hashes)
        else:
            (directory / HASHES_FILE).unlink(missing_ok=True)
        _atomic_write(directory / META_FILE, lambda tmp: tmp.write_text(json.dumps(self.meta.__dict__)))


def _load_hnsw(path: Path, dim: int, capacity: int) -> hnswlib.Index:
    hnsw = hnswlib.Index(space="cosine", dim=dim)
    hnsw.load_index(str(path), max_elements=capacity)
    return hnsw


def _read_hashes(path: Path) -> dict[int, bytes]:
    with np.load(path) as saved:
        return {int(label): bytes(code) for label, code in zip(saved["labels"], saved["codes"])}


@contextlib.contextmanager
def write_lock(directory: Path) -> Iterator[None]:
    """Exclusive across processes: the single-writer rule."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK_FILE, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class IndexReader:
    """Per-process read-only view that picks up newer saved versions without a restart."""

    def __init__(
        self,
        directory: Path,
        ef: int = 128,
        check_interval: float = 0.0,
        min_reload_interval: float = 1.0,
        on_unusable: Callable[[Path], None] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.on_unusable = on_unusable
        self.unusable = ""  # why the files on disk could not be loaded (empty: they could)
        self.ef = ef
        self.check_interval = check_interval
        # During a bulk import the writer saves often; a large index is reloaded at most this
        # often (hidden items do not wait for it: results are re-checked in the database).
        self.min_reload_interval = min_reload_interval
        self._index: VectorIndex | None = None
        self._stamp: tuple[int, int, int] | str | None = "not looked yet"
        self._checked_at = 0.0
        self._loaded_at = float("-inf")
        self._lock = threading.Lock()

    def _meta_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.directory / META_FILE)
            return (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            return None

    def get(self) -> VectorIndex | None:
        now = time.monotonic()
        if now - self._checked_at < self.check_interval:
            return self._index
        with self._lock:
            self._checked_at = now
            stamp = self._meta_stamp()
            if stamp != self._stamp:
                large = self._index is not None and len(self._index) > 20000
                if large and now - self._loaded_at < self.min_reload_interval:
                    return self._index
                self._stamp = stamp
                self._loaded_at = now
                try:
                    loaded = VectorIndex.load(self.directory, ef=self.ef)
                    self.unusable = "" if loaded is not None else f"no index in {self.directory}"
                except IndexUnusable as exc:
                    loaded, self.unusable = None, str(exc)
                    logger.error("index unusable, serving the last good version: %s", exc)
                if loaded is not None:
                    self._index = loaded
                elif self.on_unusable is not None:
                    # Keep answering from what this process has (nothing on a fresh start);
                    # the next version written is tried as soon as it appears.
                    self.on_unusable(self.directory)
            return self._index
