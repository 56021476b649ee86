"""A read/write lock for the in-memory index: hnswlib's `add_items` and `knn_query` must never
overlap, while queries may run together."""

import contextlib
import threading
from collections.abc import Iterator


class ReadWriteLock:
    """Many readers at once, or one writer. A waiting writer goes before new readers, and the
    readers that waited through a write go before the next one: a follower applying an
    import's changes batch after batch took the lock back before the woken searches could,
    and a search waited for the whole backlog (170-200 ms at a million items), not one batch."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0
        self._readers_waiting = 0
        self._admitted = 0  # readers let in ahead of waiting writers (those that waited a write)

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            self._readers_waiting += 1
            while self._writing or (self._writers_waiting and not self._admitted):
                self._cond.wait()
            self._readers_waiting -= 1
            self._admitted = max(0, self._admitted - 1)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writing or self._readers or self._admitted:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._admitted = self._readers_waiting
                self._cond.notify_all()


class SearchesFirst:
    """The searches under way in a process, which a batch of changes waits for (at most
    `patience` seconds, so changes go on under a stream of overlapping searches). A search
    takes the index's read lock many times (the graph, the re-rank, each hash match's
    vector): a batch taken between two of them made it wait once per lookup; now at most
    once, for a batch already under way when it began."""

    def __init__(self, patience: float) -> None:
        self.patience = patience
        self._idle = threading.Condition()
        self._searches = 0

    @contextlib.contextmanager
    def searching(self) -> Iterator[None]:
        with self._idle:
            self._searches += 1
        try:
            yield
        finally:
            with self._idle:
                self._searches -= 1
                if not self._searches:
                    self._idle.notify_all()

    def wait(self) -> None:
        """Until no search is under way, or `patience` has passed."""
        with self._idle:
            self._idle.wait_for(lambda: not self._searches, timeout=self.patience)
