"""The items' hashes of a model in pgvector's table (`gallery.index.pgvector`): held by each
process and kept up to date by `seq` (`CachedHashes`, what searches use), or counted in SQL
(`SqlHashes`, while a process loads them)."""

from __future__ import annotations

import threading
import time

import numpy as np
from django.db import connection

from ..retrieval.hashes import HASH_BYTES, HashIndex, HashIndexView, HashMatch, merge_due
from .files import hash_arrays
from .pgvector import TABLE
from .pgvector_values import bit_string

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
        terms = [f"bit_count(pdq # B'{bit_string(code)}')" for code in codes]
        return terms[0] if len(terms) == 1 else f"LEAST({', '.join(terms)})"

    def _variant(self, queries: np.ndarray) -> str:
        codes = np.asarray(queries, dtype=np.uint8).reshape(-1, HASH_BYTES)
        if len(codes) == 1:
            return "0"
        cases = " ".join(
            f"WHEN bit_count(pdq # B'{bit_string(code)}') = d THEN {n}" for n, code in enumerate(codes)
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
