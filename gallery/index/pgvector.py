"""The vector index in PostgreSQL with pgvector (`VECTOR_BACKEND=pgvector`): every web and
worker machine searches the one database, so any number of them share one index.

One table, `gallery_vector`: a row per (model, image) with the vector and, for the copy
model, the image's PDQ hash as `bit(256)`, and `seq`, taken from a sequence by every insert and
update. Each model has its own partial HNSW index over `embedding::vector(dim)` (pgvector indexes
one dimension; models differ), created before the model's first row, so an activation fills its
index before the switch. Hash lookups run in each process on the hashes it holds
(`CachedHashes`: the same multi-index lookup as hnswlib's), kept up to date by `seq`; a
`bit_count` scan of the table (`SqlHashes`) costs about 0.1 s per 100,000 items per lookup.

The same reading interface as `VectorIndex` (`query`, `vector`, `hash_index`, `labels`...), so
search does not care where the vectors are; the index writer upserts and deletes rows instead
of writing a journal and snapshots. Items of several views (the details index) are not held
here: the settings refuse that pair."""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from django.db import connection, transaction
from django.db.backends.utils import CursorWrapper

from ..retrieval.hashes import HASH_BYTES, HashIndex, HashIndexView, HashMatch, merge_due
from .files import IndexMeta, hash_arrays

TABLE = "gallery_vector"
COUNT_SECONDS = 2.0  # a count is kept this long (an exact count scans the model's rows)
HASH_REFRESH_SECONDS = 1.0  # a process reads the hashes changed since at most this often
# ...from the newest `seq` it had seen this long before: a transaction that took its values
# earlier may commit after one that took later ones.
HASH_OVERLAP_SECONDS = 10.0
HASH_LOAD_MARGIN = 1_000  # ...and, after a load, the rows this far below the newest
# PostgreSQL's binary COPY: a header of 19 bytes, then per row a field count and, per field,
# its length and value (big-endian); here six 64-bit numbers.
_COPY_HEADER = 19
_COPY_ROW = np.dtype(
    [("n", ">i2")] + [item for i in range(6) for item in ((f"l{i}", ">i4"), (f"v{i}", ">i8"))]
)
_NAME = re.compile(r"^[A-Za-z0-9._:+-]{1,100}$")


def _literal(vector: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.7g}" for x in np.asarray(vector, dtype=np.float32).ravel()) + "]"


def _bits(code: bytes | np.ndarray) -> str:
    raw = (
        bytes(code)
        if isinstance(code, bytes | bytearray | memoryview)
        else np.asarray(code, np.uint8).tobytes()
    )
    return "".join(f"{b:08b}" for b in raw)


def _parse(text: str) -> np.ndarray:
    return np.array(text.strip("[]").split(","), dtype=np.float32)


def backend_ready() -> str:
    """Empty when the database can hold the vectors, else why not (for /readyz and errors)."""
    if connection.vendor != "postgresql":
        return "VECTOR_BACKEND=pgvector needs a PostgreSQL database (DATABASE_URL)"
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
        if cursor.fetchone() is None:
            return "the PostgreSQL server has no pgvector extension (see the README: Scaling out)"
    return ""


def ensure_schema() -> None:
    """The extension and the table (idempotent; any process may be the first)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext('gallery_vector schema'))")
        cursor.execute("CREATE EXTENSION IF NOT EXISTS vector")
        cursor.execute(
            f"""CREATE TABLE IF NOT EXISTS {TABLE} (
                model_name varchar(100) NOT NULL,
                image_id bigint NOT NULL REFERENCES gallery_image (id) ON DELETE CASCADE,
                embedding vector NOT NULL,
                pdq bit(256),
                PRIMARY KEY (model_name, image_id)
            )"""
        )
        cursor.execute(f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS seq bigserial")
        cursor.execute(f"CREATE INDEX IF NOT EXISTS {TABLE}_seq ON {TABLE} (model_name, seq)")


@dataclass
class _Count:
    value: int = 0
    at: float = float("-inf")


class PgVectorIndex:
    """One model's vectors in `gallery_vector`, searched through its partial HNSW index."""

    def __init__(self, model: str, dim: int, *, ef: int, m: int = 16, ef_construction: int = 200) -> None:
        if not _NAME.match(model):
            raise ValueError(f"model name {model!r} cannot name an index")
        self.model, self.dim, self.ef = model, dim, ef
        self.meta = IndexMeta(model=model, dim=dim)
        self._index_name = "gallery_vector_" + hashlib.sha1(model.encode()).hexdigest()[:16]
        self._m, self._ef_construction = m, ef_construction
        self._count = _Count()
        self._ensured = False
        self._hashes: CachedHashes | None = None

    # -- schema ---------------------------------------------------------------------------
    def ensure(self) -> None:
        """The table and this model's HNSW index (built before the model's first row); once
        per process."""
        if self._ensured:
            return
        with transaction.atomic():
            ensure_schema()
            with connection.cursor() as cursor:
                cursor.execute(
                    f"CREATE INDEX IF NOT EXISTS {self._index_name} ON {TABLE} "
                    f"USING hnsw ((embedding::vector({self.dim})) vector_cosine_ops) "
                    f"WITH (m = {int(self._m)}, ef_construction = {int(self._ef_construction)}) "
                    f"WHERE model_name = '{self.model}'"
                )
        self._ensured = True

    # -- reading ----------------------------------------------------------------------------
    def __len__(self) -> int:
        now = time.monotonic()
        if now - self._count.at > COUNT_SECONDS:
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT count(*) FROM {TABLE} WHERE model_name = %s", [self.model])
                self._count = _Count(int(cursor.fetchone()[0]), now)
            self.meta.count = self._count.value
        return self._count.value

    def labels(self, between: tuple[int, int] | None = None) -> set[int]:
        """Items held; with `between` (start, end), those with start <= label < end only."""
        sql = f"SELECT image_id FROM {TABLE} WHERE model_name = %s"
        args: list[str | int] = [self.model]
        if between is not None:
            sql += " AND image_id >= %s AND image_id < %s"
            args += [between[0], between[1]]
        with connection.cursor() as cursor:
            cursor.execute(sql, args)
            return {int(row[0]) for row in cursor.fetchall()}

    def vector(self, label: int) -> np.ndarray | None:
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT embedding::text FROM {TABLE} WHERE model_name = %s AND image_id = %s",
                [self.model, label],
            )
            row = cursor.fetchone()
        return _parse(row[0]) if row else None

    @contextmanager
    def _searching(self, k: int) -> Iterator[CursorWrapper]:
        """A cursor in a transaction whose HNSW search keeps at least `k` candidates."""
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"SET LOCAL hnsw.ef_search = {int(min(1000, max(self.ef, k)))}")
            yield cursor

    def query(self, vector: np.ndarray, k: int, allowed: set[int] | None = None) -> list[tuple[int, float]]:
        """The k nearest items as (label, cosine similarity), best first. With `allowed`, those
        are scanned exactly (an HNSW scan filters after it searched: a narrow filter would
        leave few)."""
        if k <= 0:
            return []
        distance = f"embedding::vector({self.dim}) <=> '{_literal(vector)}'::vector({self.dim})"
        sql = f"SELECT image_id, 1 - ({distance}) FROM {TABLE} WHERE model_name = '{self.model}'"
        args: list[list[int]] = []
        if allowed is not None:
            sql += " AND image_id = ANY(%s)"
            args.append(list(allowed))
        with self._searching(k) as cursor:
            if allowed is not None:
                cursor.execute("SET LOCAL enable_indexscan = off")
            cursor.execute(f"{sql} ORDER BY {distance} LIMIT {int(k)}", args)
            return [(int(label), float(score)) for label, score in cursor.fetchall()]

    def hamming_query(
        self, vector: np.ndarray, k: int, allowed: set[int] | None = None, candidates: int = 200
    ) -> list[tuple[int, float]]:
        """A hash model's search: the nearest by cosine (the codes are the vectors' signs)."""
        return self.query(vector, k, allowed)

    def hash_index(self) -> HashIndexView | SqlHashes:
        """The items' hashes as this process holds them, brought up to date first."""
        if self._hashes is None:
            self._hashes = CachedHashes(self.model)
        return self._hashes.current(expected=len(self))

    # -- writing ----------------------------------------------------------------------------
    def put(self, rows: Sequence[tuple[int, np.ndarray, bytes | None]]) -> int:
        """Add or replace items: (image id, vector, PDQ hash or None)."""
        if not rows:
            return 0
        with connection.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO {TABLE} (model_name, image_id, embedding, pdq) "
                f"VALUES (%s, %s, %s::vector, %s::bit(256)) "
                f"ON CONFLICT (model_name, image_id) DO UPDATE "
                f"SET embedding = EXCLUDED.embedding, pdq = EXCLUDED.pdq, "
                f"seq = nextval(pg_get_serial_sequence('{TABLE}', 'seq'))",
                [
                    (self.model, label, _literal(vec), _bits(pdq) if pdq is not None else None)
                    for label, vec, pdq in rows
                ],
            )
        self._count.at = float("-inf")
        return len(rows)

    def remove(self, labels: Sequence[int]) -> int:
        if not labels:
            return 0
        with connection.cursor() as cursor:
            cursor.execute(
                f"DELETE FROM {TABLE} WHERE model_name = %s AND image_id = ANY(%s)",
                [self.model, list(labels)],
            )
            removed = cursor.rowcount
        self._count.at = float("-inf")
        return int(removed)

    def clear(self) -> None:
        with connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {TABLE} WHERE model_name = %s", [self.model])
        self._count.at = float("-inf")


class CachedHashes:
    """One model's hashes held in this process: loaded once (four 64-bit words per row), then
    the rows inserted or updated since (`seq`) read at most every HASH_REFRESH_SECONDS, so an
    upload is found by its hash on every machine within about a second. Changes are kept
    beside the multi-index tables (`HashIndexView`) until they grow past a twentieth, then
    merged. A removed item is dropped when the model holds fewer hashes than this process
    (all are read again); search checks every hit against the searchable images anyway."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._lock = threading.Lock()
        self._base = HashIndex(np.zeros(0, np.int64), np.zeros((0, HASH_BYTES), np.uint8))
        self._added: dict[int, bytes] = {}
        self._view: HashIndexView | None = None
        self._floors: list[tuple[float, int]] = []  # (when, the newest seq read then)
        self._checked = float("-inf")
        self._loading = threading.Thread()  # a load in the background, when alive

    def current(self, expected: int) -> HashIndexView | SqlHashes:
        """The hashes brought up to date. Reading all of them (about 10 s for a million on a
        slow day) is done in the background: meanwhile the table is scanned, or, after
        removals, the hashes held so far answer."""
        with self._lock:
            now = time.monotonic()
            if self._view is None or expected < len(self._view):
                self._load_in_background()
            elif now - self._checked >= HASH_REFRESH_SECONDS and not self._loading.is_alive():
                self._refresh(now)
                self._checked = now
            return self._view if self._view is not None else SqlHashes(self.model)

    def wait(self, timeout: float | None = None) -> None:
        """Until a load in the background has ended (for measurements and tests)."""
        if self._loading.is_alive():
            self._loading.join(timeout)

    def _load_in_background(self) -> None:
        if self._loading.is_alive():
            return

        def load() -> None:
            try:
                labels, codes, newest = self._rows(0)
                base = HashIndex(labels, codes)
                with self._lock:
                    self._base, self._added = base, {}
                    # A transaction that took its values before the newest one read may commit
                    # later: the rows just below it are read again for HASH_OVERLAP_SECONDS.
                    self._floors = [(time.monotonic(), max(0, newest - HASH_LOAD_MARGIN))]
                    self._checked = time.monotonic()
                    self._publish()
            finally:
                connection.close()  # this thread's own connection

        self._loading = threading.Thread(target=load, name="pgvector-hashes", daemon=True)
        self._loading.start()

    def _rows(self, since: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(labels, codes, newest seq) of the model's hashed rows after `since`, by label.
        Read as binary COPY of six 64-bit numbers a row (a million rows in a second or two;
        as Python rows, 13 s)."""
        words = ", ".join(f"substring(pdq from {1 + 64 * i} for 64)::bit(64)::bigint" for i in range(4))
        query = (
            f"COPY (SELECT image_id, seq, {words} FROM {TABLE} "
            f"WHERE model_name = %s AND pdq IS NOT NULL AND seq > %s) TO STDOUT (FORMAT BINARY)"
        )
        with connection.cursor() as cursor, cursor.cursor.copy(query, [self.model, since]) as copy:
            data = b"".join(bytes(block) for block in copy)
        rows = np.frombuffer(
            data, _COPY_ROW, offset=_COPY_HEADER, count=(len(data) - _COPY_HEADER - 2) // _COPY_ROW.itemsize
        )
        order = np.argsort(rows["v0"], kind="stable")
        labels = rows["v0"][order].astype(np.int64)
        words_be = np.stack([rows[f"v{i}"][order] for i in range(2, 6)], axis=1).astype(">i8")
        codes = np.ascontiguousarray(words_be).view(np.uint8).reshape(len(rows), HASH_BYTES)
        return labels, codes, int(rows["v1"].max()) if len(rows) else since

    def _refresh(self, now: float) -> None:
        settled = [n for n, (at, _) in enumerate(self._floors) if now - at >= HASH_OVERLAP_SECONDS]
        if settled:
            self._floors = self._floors[settled[-1] :]
        labels, codes, newest = self._rows(self._floors[0][1])
        self._floors.append((now, max(newest, self._floors[-1][1])))
        held, known = self._held_codes(labels)
        changed = ~known | ~(held == codes).all(axis=1)
        if not changed.any():
            return
        fresh = {int(la): c.tobytes() for la, c in zip(labels[changed], codes[changed])}
        self._added |= fresh
        self._publish()
        if merge_due(len(self._added), len(self._base)):
            self._load_in_background()  # merged into new multi-index tables

    def _held_codes(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The codes this process holds for `labels`, and which it holds at all."""
        rows, known = self._in_base(labels)
        held = np.zeros((len(labels), HASH_BYTES), np.uint8)
        held[known] = self._base.codes[rows[known]]
        for n, label in enumerate(labels.tolist()):
            code = self._added.get(label)
            if code is not None:
                held[n], known[n] = np.frombuffer(code, np.uint8), True
        return held, known

    def _in_base(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, whether held) of each label in the base, whose labels are sorted (no table of
        a million labels is built for a few new rows)."""
        base = self._base.labels
        if not len(base):
            return np.zeros(len(labels), np.int64), np.zeros(len(labels), bool)
        rows = np.minimum(np.searchsorted(base, labels), len(base) - 1)
        return rows, base[rows] == labels

    def _publish(self) -> None:
        labels, codes = hash_arrays(self._added)
        size = len(self._base) + int((~self._in_base(labels)[1]).sum())
        self._view = HashIndexView(self._base, HashIndex(labels, codes), set(self._added), size)


class SqlHashes:
    """The copy model's items' PDQ hashes, searched in SQL by Hamming distance (`bit_count`
    of the XOR). The same questions as `HashIndexView`."""

    def __init__(self, model: str) -> None:
        self.model = model

    def _distance(self, queries: np.ndarray) -> str:
        codes = np.asarray(queries, dtype=np.uint8).reshape(-1, HASH_BYTES)
        terms = [f"bit_count(pdq # B'{_bits(code)}')" for code in codes]
        return terms[0] if len(terms) == 1 else f"LEAST({', '.join(terms)})"

    def _variant(self, queries: np.ndarray) -> str:
        codes = np.asarray(queries, dtype=np.uint8).reshape(-1, HASH_BYTES)
        if len(codes) == 1:
            return "0"
        cases = " ".join(
            f"WHEN bit_count(pdq # B'{_bits(code)}') = d THEN {n}" for n, code in enumerate(codes)
        )
        return f"CASE {cases} END"

    def _select(
        self, queries: np.ndarray, where: str, tail: str, args: list[int | list[int]]
    ) -> list[HashMatch]:
        sql = (
            f"SELECT image_id, d, {self._variant(queries)} FROM (SELECT image_id, pdq, "
            f"{self._distance(queries)} AS d FROM {TABLE} WHERE model_name = %s AND pdq IS NOT NULL) AS h "
            f"WHERE {where} {tail}"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, [self.model, *args])
            return [HashMatch(int(label), int(d), int(v or 0)) for label, d, v in cursor.fetchall()]

    def within(self, queries: np.ndarray, radius: int) -> list[HashMatch]:
        return self._select(queries, "d <= %s", "ORDER BY d, image_id", [int(radius)])

    def nearest(self, query: np.ndarray, count: int) -> list[HashMatch]:
        return self._select(query, "TRUE", f"ORDER BY d, image_id LIMIT {int(count)}", [])

    def distance_to(self, labels: list[int], queries: np.ndarray) -> dict[int, int]:
        found = self._select(queries, "image_id = ANY(%s)", "", [list(labels)])
        return {m.label: m.distance for m in found}

    def _all(self) -> tuple[np.ndarray, np.ndarray]:
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT image_id, pdq::text FROM {TABLE} WHERE model_name = %s AND pdq IS NOT NULL "
                f"ORDER BY image_id",
                [self.model],
            )
            rows = cursor.fetchall()
        labels = np.array([int(r[0]) for r in rows], dtype=np.int64)
        codes = np.array(
            [np.packbits(np.frombuffer(r[1].encode(), dtype=np.uint8) - ord("0")) for r in rows],
            dtype=np.uint8,
        ).reshape(len(rows), HASH_BYTES)
        return labels, codes

    @property
    def labels(self) -> np.ndarray:
        return self._all()[0]

    @property
    def codes(self) -> np.ndarray:
        return self._all()[1]


class PgVectorReader:
    """`IndexReader`'s interface for an index with nothing to load: the table is ensured once;
    when the database cannot hold it, `get` answers None and `unusable` says why (searches
    then scan the stored vectors, as with an unloadable hnswlib index)."""

    def __init__(self, index: PgVectorIndex) -> None:
        self.index = index
        self.unusable = ""
        self._ready = False

    def get(self) -> PgVectorIndex | None:
        if not self._ready:
            self.unusable = backend_ready()
            if self.unusable:
                return None
            self.index.ensure()
            self._ready = True
        return self.index
