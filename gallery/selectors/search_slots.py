"""How many searches by image one web process runs at once (`SEARCH_SLOTS`); the others wait
their turn, first come first served.

A search is CPU work from end to end (decoding, the network, local features, pixel checks).
Eight of them time-sliced in one process take as long in total as eight in a row, but each one
finishes near the end, and they contend for the GIL and the caches on the way; run in turn,
most finish sooner. A search that waits longer than `SEARCH_SLOT_WAIT_SECONDS` (a stuck one
holds its slot) runs anyway: the gate only orders the work, it never refuses it."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

from django.conf import settings
from django.db import connections

logger = logging.getLogger(__name__)
T = TypeVar("T")


class FairGate:
    """`slots` holders at a time; the others wait in a queue and get a freed slot in the
    order they came (a `threading.Semaphore` lets a newcomer take it first: 8 clients' p99
    grew from 164 to 210 ms with it, while this gate takes the p95 down with the rest)."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._free = slots
        self._lock = threading.Lock()
        self._queue: deque[threading.Event] = deque()

    def acquire(self, timeout: float) -> bool:
        with self._lock:
            if self._free > 0 and not self._queue:
                self._free -= 1
                return True
            turn = threading.Event()
            self._queue.append(turn)
        if turn.wait(timeout):
            return True
        with self._lock:
            if turn.is_set():  # handed a slot just as the wait ran out
                return True
            self._queue.remove(turn)
            return False

    def release(self) -> None:
        with self._lock:
            if self._queue:
                self._queue.popleft().set()  # the slot goes straight to the longest waiter
            else:
                self._free += 1


_lock = threading.Lock()
_gate: FairGate | None = None


def _process_gate(slots: int) -> FairGate:
    global _gate
    with _lock:
        if _gate is None or _gate.slots != slots:  # (a test may change the setting)
            _gate = FairGate(slots)
        return _gate


@contextmanager
def search_slot() -> Iterator[float]:
    """Holds one of the process's search slots while the block runs; yields the seconds it
    waited for it. `SEARCH_SLOTS = 0` lets every search run at once."""
    slots = int(settings.SEARCH_SLOTS)
    if slots <= 0:
        yield 0.0
        return
    gate = _process_gate(slots)
    started = time.perf_counter()
    held = gate.acquire(timeout=float(settings.SEARCH_SLOT_WAIT_SECONDS))
    waited = time.perf_counter() - started
    if not held:
        logger.warning("a search waited %.1f s for a slot and runs without one", waited)
    try:
        yield waited
    finally:
        if held:
            gate.release()


_helpers: tuple[int, ThreadPoolExecutor] | None = None  # (the process that made it, the pool)


def beside(fn: Callable[..., T], *args: object) -> Future[T]:
    """`fn(*args)` in one of the process's helper threads while the caller goes on: a search
    asks the vector index (pgvector: a round trip to the database, 20-30 ms at a million
    items; hnswlib lets go of the GIL) while it computes the picture's hashes. Each helper
    keeps its database connection (a few per process; a new one per search would cost a
    connect each time), closed and opened again when it stops working."""
    global _helpers
    with _lock:
        if _helpers is None or _helpers[0] != os.getpid():  # threads do not survive a fork
            _helpers = (os.getpid(), ThreadPoolExecutor(max_workers=8, thread_name_prefix="search-helper"))
        pool = _helpers[1]

    def run() -> T:
        for held in connections.all(initialized_only=True):
            if held.connection is not None and not held.is_usable():
                held.close()
        return fn(*args)

    return pool.submit(run)
