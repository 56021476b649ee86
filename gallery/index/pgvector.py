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
here: the settings refuse that pair.

Compact vectors (`compact.Projection`, the rule of `INDEX_COMPACT_*`): a model version loaded in
bulk with a projection keeps each row's projected vector in `compact` too, its HNSW index is
over those (a fifth of the numbers: an index that fits in memory at a million items, built
faster) and a search's first candidates are re-ranked by the full vectors in the same query,
so scores stay the full vectors' cosines. The projection is stored beside the rows
(`gallery_vector_projection`), where every process reads it."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from django.db.backends.utils import CursorWrapper

from ..retrieval.hashes import HashIndexView
from . import pgvector_projection
from .compact import Projection
from .files import IndexMeta
from .pgvector_projection import StoredProjection
from .pgvector_values import COPY_SIGNATURE, COPY_TRAILER, binary_rows, bit_string, literal, parse

if TYPE_CHECKING:
    from .pgvector_hashes import CachedHashes, SqlHashes

TABLE = "gallery_vector"
# A compact index's graph is searched with an ef of COMPACT_EF and its first RERANK candidates
# (at least 2 k) re-ranked by the full vectors, each read from TOAST. At a million items
# (bench/scale.py --pgvector) recall@10 followed the ef, not the depth: ef 400 kept 0.937-0.941
# of the exact top 10 with 200 or 400 re-ranked, ef 800 0.973-0.975 with 400 or 800.
RERANK = 200
COMPACT_EF = 800
COUNT_SECONDS = 2.0  # a count is kept this long (an exact count scans the model's rows)
_NAME = re.compile(r"^[A-Za-z0-9._:+-]{1,100}$")


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
        cursor.execute(f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS compact vector")
        pgvector_projection.create_table(cursor)


@dataclass
class _Count:
    value: int = 0
    at: float = float("-inf")


class PgVectorIndex:
    """One model's vectors in `gallery_vector`, searched through its partial HNSW index."""

    def __init__(
        self,
        model: str,
        dim: int,
        *,
        ef: int,
        m: int = 16,
        ef_construction: int = 200,
        rerank: int = RERANK,
        compact_ef: int = COMPACT_EF,
    ) -> None:
        if not _NAME.match(model):
            raise ValueError(f"model name {model!r} cannot name an index")
        self.model, self.dim, self.ef = model, dim, ef
        self.rerank, self.compact_ef = rerank, compact_ef
        self.meta = IndexMeta(model=model, dim=dim)
        self._base_name = "gallery_vector_" + hashlib.sha1(model.encode()).hexdigest()[:16]
        self._m, self._ef_construction = m, ef_construction
        self._count = _Count()
        self._ensured = False
        self._hashes: CachedHashes | None = None
        self.projection: Projection | None = None  # the compact vectors' searches use
        self._writing: Projection | None = None  # the one rows are written with (active or pending)
        self._state: tuple[str, bool] | None = None  # (digest, active) of the stored one
        self._projection_at = float("-inf")

    # -- schema ---------------------------------------------------------------------------
    def ensure(self) -> None:
        """The table and this model's HNSW index (built before the model's first row); once
        per process."""
        if self._ensured:
            return
        with transaction.atomic():
            ensure_schema()
            self._read_projection(force=True)
            with connection.cursor() as cursor:
                cursor.execute(self._create_index(projection=self.projection))
        self._ensured = True

    def _index_name_for(self, compact: bool) -> str:
        return self._base_name + ("_c" if compact else "")

    @property
    def _index_name(self) -> str:
        """The HNSW index searches use: over the compact vectors when the model has them."""
        return self._index_name_for(self.projection is not None)

    def _create_index(self, concurrently: bool = False, projection: Projection | None = None) -> str:
        """The full vectors' HNSW index, or with `projection` the compact vectors'."""
        column, dims = ("embedding", self.dim) if projection is None else ("compact", projection.dims)
        return (
            f"CREATE INDEX {'CONCURRENTLY ' if concurrently else ''}IF NOT EXISTS "
            f"{self._index_name_for(projection is not None)} "
            f"ON {TABLE} USING hnsw (({column}::vector({dims})) vector_cosine_ops) "
            f"WITH (m = {int(self._m)}, ef_construction = {int(self._ef_construction)}) "
            f"WHERE model_name = '{self.model}'"
        )

    def _build_concurrently(self, cursor: CursorWrapper, projection: Projection | None) -> None:
        """An HNSW index built in one go over rows already there (`_create_index`), with the
        memory its graph needs (`PGVECTOR_BUILD_MEMORY`); writes go on meanwhile."""
        cursor.execute(f"SET maintenance_work_mem = '{settings.PGVECTOR_BUILD_MEMORY}'")
        try:
            cursor.execute(self._create_index(concurrently=True, projection=projection))
        finally:
            cursor.execute("RESET maintenance_work_mem")

    def _read_projection(self, force: bool = False) -> None:
        """The model's stored projection, read again when another process stored a new one or
        made it active (looked at every COUNT_SECONDS at most, unless `force`)."""
        now = time.monotonic()
        if not force and now - self._projection_at <= COUNT_SECONDS:
            return
        if not self._ensured and not force:
            self.ensure()
            return
        state = pgvector_projection.stored_state(self.model)
        if state != self._state:
            self._use(pgvector_projection.stored(self.model) if state else None)
        self._projection_at = now

    def _use(self, found: StoredProjection | None) -> None:
        self._state = (found.digest, found.active) if found else None
        self._writing = found.projection if found else None
        self.projection = found.projection if found and found.active else None
        self.meta.compact_dims = self.projection.dims if self.projection is not None else 0

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
        return parse(row[0]) if row else None

    def searching(self) -> AbstractContextManager[None]:
        """Nothing to hold: the database orders changes and searches."""
        return nullcontext()

    @contextmanager
    def _searching(self, k: int) -> Iterator[CursorWrapper]:
        """A cursor in a transaction whose HNSW search keeps at least `k` candidates."""
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"SET LOCAL hnsw.ef_search = {int(min(1000, max(self.ef, k)))}")
            yield cursor

    def query(self, vector: np.ndarray, k: int, allowed: set[int] | None = None) -> list[tuple[int, float]]:
        """The k nearest items as (label, cosine similarity), best first. With `allowed`, those
        are scanned exactly (an HNSW scan filters after it searched: a narrow filter would
        leave few). A compact index's first `rerank` are ranked again by the full vectors."""
        if k <= 0:
            return []
        self._read_projection()
        full = f"embedding::vector({self.dim}) <=> '{literal(vector)}'::vector({self.dim})"
        where = f"model_name = '{self.model}'"
        args: list[list[int]] = []
        if allowed is not None:
            where += " AND image_id = ANY(%s)"
            args.append(list(allowed))
        projection, depth = self.projection, int(k)
        if projection is None:
            sql = f"SELECT image_id, 1 - ({full}) FROM {TABLE} WHERE {where} ORDER BY {full} LIMIT {depth}"
        else:
            depth = max(self.rerank, 2 * depth)
            dims = projection.dims
            compact = f"compact::vector({dims}) <=> '{literal(projection.apply(vector)[0])}'::vector({dims})"
            sql = (
                f"SELECT image_id, 1 - ({full}) AS score FROM (SELECT image_id, embedding FROM {TABLE} "
                f"WHERE {where} ORDER BY {compact} LIMIT {depth}) AS first ORDER BY score DESC LIMIT {int(k)}"
            )
        with self._searching(depth if projection is None else max(depth, self.compact_ef)) as cursor:
            if allowed is not None:
                cursor.execute("SET LOCAL enable_indexscan = off")
            cursor.execute(sql, args)
            return [(int(label), float(score)) for label, score in cursor.fetchall()]

    def hamming_query(
        self, vector: np.ndarray, k: int, allowed: set[int] | None = None, candidates: int = 200
    ) -> list[tuple[int, float]]:
        """A hash model's search: the nearest by cosine (the codes are the vectors' signs)."""
        return self.query(vector, k, allowed)

    def hash_index(self) -> HashIndexView | SqlHashes:
        """The items' hashes as this process holds them, brought up to date first."""
        if self._hashes is None:
            from .pgvector_hashes import CachedHashes  # (it reads this module's table)

            self._hashes = CachedHashes(self.model)
        return self._hashes.current(expected=len(self))

    def hash_distances(self, labels: list[int], queries: np.ndarray) -> dict[int, int]:
        """The smallest distance of each given item's hash to any of the query hashes (in SQL:
        the writer need not hold every hash for it)."""
        from .pgvector_hashes import SqlHashes  # (it reads this module's table)

        return SqlHashes(self.model).distance_to(labels, queries)

    # -- writing ----------------------------------------------------------------------------
    def put(self, rows: Sequence[tuple[int, np.ndarray, bytes | None]]) -> int:
        """Add or replace items: (image id, vector, PDQ hash or None)."""
        if not rows:
            return 0
        self._read_projection(force=True)  # a pending projection: every row written has it
        compact: list[str | None] = [None] * len(rows)
        if self._writing is not None:
            compact = [literal(c) for c in self._writing.apply(np.stack([v for _, v, _ in rows]))]
        with connection.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO {TABLE} (model_name, image_id, embedding, pdq, compact) "
                f"VALUES (%s, %s, %s::vector, %s::bit(256), %s::vector) "
                f"ON CONFLICT (model_name, image_id) DO UPDATE "
                f"SET embedding = EXCLUDED.embedding, pdq = EXCLUDED.pdq, compact = EXCLUDED.compact, "
                f"seq = nextval(pg_get_serial_sequence('{TABLE}', 'seq'))",
                [
                    (self.model, label, literal(vec), bit_string(pdq) if pdq is not None else None, small)
                    for (label, vec, pdq), small in zip(rows, compact)
                ],
            )
        self._count.at = float("-inf")
        return len(rows)

    def load(
        self,
        chunks: Iterable[Sequence[tuple[int, np.ndarray, bytes | None]]],
        projection: Projection | None = None,
    ) -> int:
        """All of a model's rows at once, for a model no search uses yet (a version built
        before its switch): copied in (COPY) without its HNSW index, which is then built once
        over them, CONCURRENTLY (other models' rows are written meanwhile). Inserting rows one
        by one into the graph ran at about 110 a second at 1,472 dimensions. Outside a
        transaction (CONCURRENTLY needs one of its own); rows the model had are replaced, and
        its projection, by `projection` (compact vectors) or by none."""
        if connection.in_atomic_block:
            raise RuntimeError("PgVectorIndex.load builds its index outside a transaction")
        with transaction.atomic():
            ensure_schema()
        with connection.cursor() as cursor:
            # An index left by an earlier load that failed half-way (invalid) goes too.
            for compact in (False, True):
                cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {self._index_name_for(compact)}")
        added = 0
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {TABLE} WHERE model_name = %s", [self.model])
            pgvector_projection.store(self.model, projection, active=True)
            columns = "model_name, image_id, embedding, pdq, compact"
            # One COPY per chunk: the next chunk is read (from this connection, often) between them.
            for rows in chunks:
                with cursor.cursor.copy(f"COPY {TABLE} ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.write(COPY_SIGNATURE + binary_rows(self.model, rows, projection) + COPY_TRAILER)
                added += len(rows)
        self._use(
            None
            if projection is None
            else StoredProjection(projection, pgvector_projection.digest_of(projection), True)
        )
        self._projection_at = time.monotonic()
        with connection.cursor() as cursor:
            # The planner's row counts, else it keeps sorting "two rows" by distance (a scan
            # of all of them) until autovacuum comes by; and VACUUM: the loaded rows' hint bits
            # and visibility are set once here, not by the first searches (a read that sets
            # them writes the page) or by an autovacuum taking a core while they run.
            cursor.execute(f"VACUUM (ANALYZE) {TABLE}")
            self._build_concurrently(cursor, projection)
        self._ensured = True
        self._count.at = float("-inf")
        return added

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

    # -- a served model's move to compact vectors (services.index_compact) -------------------
    def pending_projection(self) -> Projection | None:
        """The projection rows are being given before searches use it, if any."""
        self._read_projection(force=True)
        return self._writing if self.projection is None else None

    def compact_start(self, projection: Projection) -> None:
        """From now on every row written gets `projection`'s vector too (pending)."""
        pgvector_projection.store(self.model, projection, active=False)
        self._read_projection(force=True)

    def lacking_compact(self, after: int, limit: int) -> list[int]:
        """Items after `after` whose rows have no compact vector yet, in id order."""
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT image_id FROM {TABLE} WHERE model_name = %s AND image_id > %s AND compact IS NULL "
                "ORDER BY image_id LIMIT %s",
                [self.model, after, limit],
            )
            return [int(row[0]) for row in cursor.fetchall()]

    def put_compact(self, rows: Sequence[tuple[int, np.ndarray]]) -> int:
        """Give rows written before the projection their compact vector (from their full one)."""
        self._read_projection(force=True)
        if not rows or self._writing is None:
            return 0
        compact = self._writing.apply(np.stack([v for _, v in rows]))
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {TABLE} AS t SET compact = v.compact::vector FROM "
                "(SELECT unnest(%s::bigint[]) AS image_id, unnest(%s::text[]) AS compact) AS v "
                "WHERE t.model_name = %s AND t.image_id = v.image_id",
                [[int(label) for label, _ in rows], [literal(c) for c in compact], self.model],
            )
            return int(cursor.rowcount)

    def compact_finish(self) -> bool:
        """The pending projection's HNSW index built beside the full one (CONCURRENTLY:
        writes go on), then made the one searches use, and the full vectors' index dropped.
        Outside a transaction; False when no projection is pending."""
        if connection.in_atomic_block:
            raise RuntimeError("PgVectorIndex.compact_finish builds its index outside a transaction")
        found = pgvector_projection.stored(self.model)
        if found is None or found.active:
            return False
        name = self._index_name_for(True)
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = %s",
                [name],
            )
            row = cursor.fetchone()
            if row is not None and not row[0]:  # left by a build that failed half-way
                cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
            self._build_concurrently(cursor, found.projection)
            if not pgvector_projection.activate(self.model, found.digest):
                return False  # replaced meanwhile (a bulk load): its own index is there
            self._read_projection(force=True)
            time.sleep(2 * COUNT_SECONDS)  # every process sees the switch before the old index goes
            cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {self._index_name_for(False)}")
        return True


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

    def close(self) -> None:
        """Nothing runs in the background for the database's index."""
