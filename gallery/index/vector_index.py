"""The in-memory index: hnswlib plus what it lacks (live count, deletes, perceptual hashes, a
read/write lock so that searches in many threads and applied changes never overlap)."""

import json
from contextlib import AbstractContextManager
from pathlib import Path

import hnswlib
import numpy as np

from ..retrieval.hashes import HashIndexView
from .compact import FULL_LABELS_FILE, FULL_VECTORS_FILE, PROJECTION_FILE, FullVectors, Projection
from .files import (
    HASHES_FILE,
    INDEX_FILE,
    META_FILE,
    MIN_CAPACITY,
    IndexMeta,
    IndexUnusable,
    IndexWriteFailed,
    atomic_write,
    hash_arrays,
    load_hnsw,
    read_hashes,
)
from .held_hashes import HeldHashes
from .journal import CatchUp, Journal, JournalBatch
from .rwlock import ReadWriteLock, SearchesFirst
from .sign_codes import SignCodes, hamming_ranked

APPLY_BATCH = 16  # items added per hold of the write lock: a search waits at most one batch
# (measured here: 64 held it up to 110 ms, 16 up to 40 ms, for 10 % fewer inserts a second)
SEARCH_PATIENCE = 0.1  # seconds a batch of changes waits for the searches under way
# A compact index's candidates re-ranked by the full vectors (at least 2 k). bench/scale.py at a
# million items, PCA to 256: the exact top 10 is within the projected first 100 for 0.93 of
# queries, 200 for 0.98, 400 for 0.995 (and hnswlib's approximate first 100 held 0.85 of it).
RERANK = 400
# A compact index ranks a filter's members whole up to this many (bench/scale.py at a million
# items, a 10,000-item category: hnswlib's filter for 400 of them 123 ms, ranked whole 51 ms).
EXACT_SUBSET = 20_000


class VectorIndex:
    """An in-memory hnswlib index plus the bookkeeping hnswlib lacks (live count, deletes,
    perceptual hashes), safe to search from many threads while changes are applied.

    An item may have several vectors (`meta.views`, e.g. a photo's details): they are stored
    under labels `item * views + view`, and everything here speaks of items.

    A compact index (`projection`, one view per item) holds projected vectors in hnswlib and
    the full ones in `full`; searches re-rank their first candidates by the full vectors, and
    `vector` gives the full one (see `compact`)."""

    def __init__(
        self,
        meta: IndexMeta,
        hnsw: hnswlib.Index,
        ef: int,
        projection: Projection | None = None,
        full: FullVectors | None = None,
    ) -> None:
        self.meta = meta
        self.hnsw = hnsw
        # A compact index's graph is searched for RERANK candidates: with an ef of twice that,
        # its recall@10 at a million items is 0.99 (ef 400: 0.95) for 0.4 ms more.
        self.ef = ef if projection is None else max(ef, 2 * RERANK)
        self.projection = projection
        self.full = full if full is not None or projection is None else FullVectors(meta.dim)
        self._lock = ReadWriteLock()
        self._searches = SearchesFirst(SEARCH_PATIENCE)
        self._deleted = set(meta.deleted)
        self._hashes = HeldHashes()
        self._codes = SignCodes(meta.dim)  # for hamming_query, built on its first call
        hnsw.set_ef(self.ef)  # not persisted by hnswlib: set after every load

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
        views: int = 1,
        projection: Projection | None = None,
        learned_on: int = 0,
    ) -> "VectorIndex":
        if projection is not None and views != 1:
            raise ValueError("a compact index holds one vector per item")
        meta = IndexMeta(model=model, dim=dim, views=views, capacity=capacity * views)
        if projection is not None:
            meta.compact_dims, meta.compact_learned_on = projection.dims, learned_on
        hnsw = hnswlib.Index(space="cosine", dim=meta.graph_dim)
        hnsw.init_index(
            max_elements=meta.capacity, M=m, ef_construction=ef_construction, allow_replace_deleted=False
        )
        return cls(meta, hnsw, ef, projection)

    @classmethod
    def load(cls, directory: Path, *, ef: int = 128) -> "VectorIndex | None":
        """The saved snapshot, or None when there is none. Raises `IndexUnusable` when there
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
            hnsw = load_hnsw(path, meta.graph_dim, meta.capacity)
            if meta.compact_dims:
                projection = Projection.read(directory / PROJECTION_FILE)
                if projection.dims != meta.compact_dims or len(projection.mean) != meta.dim:
                    raise IndexUnusable(f"{directory / PROJECTION_FILE} does not match {META_FILE}")
                index = cls(meta, hnsw, ef, projection, FullVectors.load(directory, meta.dim))
            else:
                index = cls(meta, hnsw, ef)
            if (directory / HASHES_FILE).exists():
                index._hashes = HeldHashes(read_hashes(directory / HASHES_FILE))
        except IndexUnusable:
            raise
        except (OSError, RuntimeError, ValueError, KeyError, EOFError, MemoryError) as exc:
            raise IndexUnusable(f"{directory} cannot be loaded: {exc}") from exc
        return index

    def __len__(self) -> int:
        return self.meta.count

    def labels(self, between: tuple[int, int] | None = None) -> set[int]:
        """Live items; with `between` (start, end), those with start <= label < end only."""
        with self._lock.reading():
            stored = self.hnsw.get_ids_list()
        views = self.meta.views
        if between is not None:
            items = np.asarray(stored, dtype=np.int64) // views
            items = items[(items >= between[0]) & (items < between[1])]
            return set(np.unique(items).tolist()) - self._deleted
        return ({int(x) // views for x in stored} if views > 1 else set(stored)) - self._deleted

    def _stored(self, items: list[int]) -> np.ndarray:
        """hnswlib's labels of the items' vectors (all their views)."""
        ids = np.asarray(items, dtype=np.int64)
        views = self.meta.views
        return ids if views == 1 else (ids[:, None] * views + np.arange(views)).reshape(-1)

    def _single_view(self) -> None:
        if self.meta.views != 1:
            raise ValueError(f"{self.meta.model} holds {self.meta.views} vectors per item")

    def add(self, labels: list[int], vectors: np.ndarray, hashes: list[bytes | None] | None = None) -> None:
        """Add or replace items (and their perceptual hashes, when given), a batch at a time
        so that searches in other threads wait little. The caller has checked in the
        database that they are visible (re-adding a deleted label makes it live again)."""
        if not labels:
            return
        views = self.meta.views
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(labels), views, self.meta.dim)
        codes = list(hashes or [None] * len(labels))
        for start in range(0, len(labels), APPLY_BATCH):
            chunk = [int(x) for x in labels[start : start + APPLY_BATCH]]
            rows = vectors[start : start + APPLY_BATCH].reshape(-1, self.meta.dim)
            self._searches.wait()
            with self._lock.writing():
                needed = self.hnsw.get_current_count() + len(rows)  # at most: some may be replaced
                if needed > self.hnsw.get_max_elements():
                    self.hnsw.resize_index(max(needed, 2 * self.hnsw.get_max_elements()))
                if self.projection is not None and self.full is not None:
                    self.full.put(chunk, rows)
                    self.hnsw.add_items(self.projection.apply(rows), self._stored(chunk))
                else:
                    self.hnsw.add_items(rows, self._stored(chunk))
                self._deleted -= set(chunk)
                self._codes.added(chunk, rows)
                for label, code in zip(chunk, codes[start : start + APPLY_BATCH]):
                    if code:
                        self._hashes.set(label, bytes(code))
                self._sync_meta()

    def _sync_meta(self) -> None:
        self.meta.capacity = self.hnsw.get_max_elements()
        self.meta.count = self.hnsw.get_current_count() // self.meta.views - len(self._deleted)
        self.meta.deleted = sorted(self._deleted)

    def remove(self, labels: list[int]) -> int:
        """Mark items deleted (unknown or already deleted labels are ignored)."""
        removed = 0
        self._searches.wait()
        with self._lock.writing():
            for label in labels:
                label = int(label)
                if label in self._deleted:
                    continue
                try:
                    for stored in self._stored([label]):
                        self.hnsw.mark_deleted(int(stored))
                except RuntimeError:
                    continue  # not in the index
                self._deleted.add(label)
                self._hashes.drop(label)
                self._codes.removed(label)
                removed += 1
            self._sync_meta()
        return removed

    def apply(self, batch: JournalBatch) -> tuple[int, int]:
        """Replay changes read from the journal; returns (added, removed)."""
        self.add(batch.labels, batch.vectors, batch.hashes or None)
        removed = self.remove(batch.removed) if batch.removed else 0
        self.meta.journal_seq = max(self.meta.journal_seq, batch.seq)
        return len(batch.labels), removed

    def catch_up(self, journal: Journal, limit: int | None = None) -> CatchUp:
        """Apply the journal's changes after this index's last one (at most `limit`)."""
        result = CatchUp()
        done = 0
        while limit is None or done < limit:
            step = 2000 if limit is None else min(2000, limit - done)
            batch = journal.read(self.meta.model, self.meta.journal_seq, step)
            if batch is None:
                return result
            added, removed = self.apply(batch)
            result.added, result.removed = result.added + added, result.removed + removed
            done += step
            if not batch.more:
                return result
        result.more = True
        return result

    def vector(self, label: int) -> np.ndarray | None:
        self._single_view()
        with self._lock.reading():
            if label in self._deleted:
                return None
            try:
                stored = self._full_rows([label])[0]
            except RuntimeError:
                return None
            return stored if self.full is None or stored.any() else None

    def _full_rows(self, labels: list[int] | np.ndarray) -> np.ndarray:
        """The items' full vectors (call with the lock held; hnswlib raises RuntimeError for a
        label it does not hold, a compact index gives zeros)."""
        if self.full is not None:
            return self.full.get(labels)
        return np.asarray(self.hnsw.get_items(labels), dtype=np.float32).reshape(-1, self.meta.dim)

    def query(self, vector: np.ndarray, k: int, allowed: set[int] | None = None) -> list[tuple[int, float]]:
        """The k nearest live items as (label, cosine similarity), best first. `k` is clamped
        to what the index (or the `allowed` subset) holds."""
        limit = self.meta.count if allowed is None else min(self.meta.count, len(allowed))
        k = min(k, limit)
        if k <= 0:
            return []
        if self.meta.views > 1:
            return self._query_views(vector, k, allowed)
        if self.projection is None:
            return self._graph_query(vector, k, allowed)
        # Compact: the first candidates by the projected vectors, ranked by the full ones; a
        # small subset is ranked whole (hnswlib would walk far to find RERANK of its members).
        if allowed is not None and len(allowed) <= EXACT_SUBSET:
            labels = [label for label in allowed if label not in self._deleted]
        else:
            fetch = min(limit, max(RERANK, 2 * k))
            labels = [
                label for label, _ in self._graph_query(self.projection.apply(vector)[0], fetch, allowed)
            ]
        with self._lock.reading():
            rows = self._full_rows(labels)
        scores = rows @ np.asarray(vector, dtype=np.float32).reshape(-1)
        held = np.flatnonzero(rows.any(axis=1))  # a label the index does not hold has no row
        order = held[np.argsort(-scores[held], kind="stable")[:k]]
        return [(labels[i], float(scores[i])) for i in order]

    def _graph_query(self, vector: np.ndarray, k: int, allowed: set[int] | None) -> list[tuple[int, float]]:
        """hnswlib's k nearest of one vector as it stores them (projected, when compact)."""
        flt = None if allowed is None else (lambda label: label in allowed)
        query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        with self._lock.reading():
            try:
                labels, distances = self.hnsw.knn_query(query, k=k, filter=flt)
                return [(int(label), float(1.0 - d)) for label, d in zip(labels[0], distances[0])]
            except RuntimeError:
                pass
        # Fewer than k reachable (a narrow filter, many deleted items): widen the search, then
        # ask for fewer. `ef` is shared by every thread's queries, so this runs alone.
        ef = max(self.ef, k)
        with self._lock.writing():
            try:
                while True:
                    self.hnsw.set_ef(ef)
                    try:
                        labels, distances = self.hnsw.knn_query(query, k=k, filter=flt)
                        break
                    except RuntimeError:
                        if ef < 4 * max(self.meta.capacity, 1) and ef < 4096:
                            ef *= 4
                        elif k > 1:
                            k = max(1, k // 2)
                        else:
                            return []
            finally:
                self.hnsw.set_ef(self.ef)
        return [(int(label), float(1.0 - d)) for label, d in zip(labels[0], distances[0])]

    def _query_views(self, vector: np.ndarray, k: int, allowed: set[int] | None) -> list[tuple[int, float]]:
        """`query` for items of several vectors: each item scores its best view. Asks for
        k vectors per view an item has, so that k items come back."""
        views = self.meta.views
        flt = None if allowed is None else (lambda label: label // views in allowed)
        wanted = min(k * views, self.hnsw.get_current_count() - len(self._deleted) * views)
        query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        with self._lock.reading():  # hnswlib searches with max(ef, k) candidates
            try:
                labels, distances = self.hnsw.knn_query(query, k=max(1, wanted), filter=flt)
            except RuntimeError:
                return []
        best: dict[int, float] = {}
        for label, d in zip(labels[0], distances[0]):
            item = int(label) // views
            best.setdefault(item, float(1.0 - d))  # nearest first: an item's first is its best
        return sorted(best.items(), key=lambda pair: -pair[1])[:k]

    def hamming_query(
        self, vector: np.ndarray, k: int, allowed: set[int] | None = None, candidates: int = 200
    ) -> list[tuple[int, float]]:
        """Binary-code search for hash models (`sign_codes`): every live item ranked by
        Hamming distance, the best `candidates` re-ranked by cosine."""
        self._single_view()
        with self._lock.reading():
            codes = self._codes.current(self._live_rows)
        return hamming_ranked(codes, vector, k, allowed, candidates)

    def _live_rows(self) -> tuple[np.ndarray, np.ndarray]:
        labels = np.array(sorted(set(self.hnsw.get_ids_list()) - self._deleted), dtype=np.int64)
        if not len(labels):
            return labels, np.zeros((0, self.meta.dim), dtype=np.float32)
        return labels, self._full_rows(labels)

    def hash_index(self, *, eager: bool = False) -> HashIndexView:
        """The live items' hashes by Hamming distance (`HeldHashes.view`)."""
        view = self._hashes.current_view(eager=eager)
        if view is not None:
            return view
        with self._lock.reading():
            return self._hashes.view(eager=eager)

    def hash_distances(self, labels: list[int], queries: np.ndarray) -> dict[int, int]:
        """The smallest distance of each given item's hash to any of the query hashes."""
        with self._lock.reading():
            return self._hashes.distances(labels, queries)

    def _write_hashes(self, path: Path) -> None:
        labels, codes = hash_arrays(self._hashes.codes)
        with open(path, "wb") as fh:
            np.savez(fh, labels=labels, codes=codes)
        try:
            if len(read_hashes(path)) != len(labels):
                raise ValueError("fewer hashes than written")
        except (OSError, ValueError, KeyError, EOFError) as exc:
            raise IndexWriteFailed(f"the hashes written to {path} cannot be read back: {exc}") from exc

    def _write_hnsw(self, path: Path) -> None:
        """hnswlib's save, then a load of what it wrote: the same number of items must come back
        (it reports no failed write). Costs a second load of the file, about 1 s per 200,000
        items."""
        self.hnsw.save_index(str(path))
        try:
            written = load_hnsw(path, self.meta.graph_dim, self.hnsw.get_max_elements()).get_current_count()
        except (OSError, RuntimeError, ValueError, MemoryError) as exc:
            raise IndexWriteFailed(f"the index written to {path} cannot be read back: {exc}") from exc
        if written != self.hnsw.get_current_count():
            raise IndexWriteFailed(
                f"{path} holds {written} items, {self.hnsw.get_current_count()} were written"
            )
        self.meta.index_bytes = path.stat().st_size

    def searching(self) -> AbstractContextManager[None]:
        """Held by a search for all its lookups: changes wait for it (`SearchesFirst`)."""
        return self._searches.searching()

    def unchanging(self) -> AbstractContextManager[None]:
        """No change is applied while this is held (searches go on): for a fork that must
        not copy an insert half done."""
        return self._lock.reading()

    def save(self, directory: Path) -> None:
        """Writes a new snapshot; raises `IndexWriteFailed` (leaving the last good one in
        place) when a file cannot be read back."""
        with self._lock.reading():
            self.save_unlocked(directory)

    def save_unlocked(self, directory: Path) -> None:
        """`save` without the read/write lock: for a forked child (`background_save`), which
        holds the index as it was at the fork and whose lock another thread may have held."""
        directory.mkdir(parents=True, exist_ok=True)
        self.meta.version += 1
        self.meta.capacity = self.hnsw.get_max_elements()
        atomic_write(directory / INDEX_FILE, self._write_hnsw)
        if self.projection is not None and self.full is not None:
            atomic_write(directory / PROJECTION_FILE, self.projection.write)
            live = np.fromiter(set(self.hnsw.get_ids_list()) - self._deleted, dtype=np.int64)
            self.full.write(directory, live)
            self.full = FullVectors.load(directory, self.meta.dim)  # the file's rows, shared
        else:
            for name in (PROJECTION_FILE, FULL_VECTORS_FILE, FULL_LABELS_FILE):
                (directory / name).unlink(missing_ok=True)
        if len(self._hashes):
            atomic_write(directory / HASHES_FILE, self._write_hashes)
        else:
            (directory / HASHES_FILE).unlink(missing_ok=True)
        atomic_write(directory / META_FILE, lambda tmp: tmp.write_text(json.dumps(self.meta.__dict__)))

    def adopt_snapshot(
        self, directory: Path, written: IndexMeta, full_at_fork: dict[int, np.ndarray]
    ) -> None:
        """A forked child saved this index as it was at the fork (`background_save`): take the
        snapshot's bookkeeping, and map the full vectors from the file it appended to (the
        rows added since stay in memory), so the next save appends again."""
        with self._lock.writing():
            self.meta.version = written.version
            self.meta.journal_floor = written.journal_floor
            self.meta.index_bytes = written.index_bytes
            if self.projection is not None and self.full is not None:
                full = FullVectors.load(directory, self.meta.dim)
                full.keep_newer(self.full, full_at_fork)
                self.full = full
