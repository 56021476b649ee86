"""The index's read/write lock: searches never wait for more than one batch of changes, and
changes are not starved by searches."""

import threading
import time

from gallery.index.rwlock import ReadWriteLock, SearchesFirst

HOLD = 0.05  # one batch of changes


def _writer(lock: ReadWriteLock, batches: int, started: threading.Event) -> None:
    for _ in range(batches):
        with lock.writing():
            started.set()
            time.sleep(HOLD)


def test_a_search_waits_one_batch_of_changes_not_the_backlog():
    """A follower applies batch after batch: a search that arrives meanwhile gets in at the
    end of the batch under way (it used to wait for all ten)."""
    lock, started = ReadWriteLock(), threading.Event()
    writer = threading.Thread(target=_writer, args=(lock, 10, started))
    writer.start()
    started.wait(5)
    asked = time.monotonic()
    with lock.reading():
        waited = time.monotonic() - asked
    writer.join()
    assert waited < 3 * HOLD, waited


def test_a_waiting_writer_goes_before_new_searches():
    """Searches one after another from several threads never keep a change out for long."""
    lock, stop = ReadWriteLock(), threading.Event()

    def search() -> None:
        while not stop.is_set():
            with lock.reading():
                time.sleep(0.005)

    readers = [threading.Thread(target=search) for _ in range(4)]
    for reader in readers:
        reader.start()
    time.sleep(0.05)
    asked = time.monotonic()
    with lock.writing():
        waited = time.monotonic() - asked
    stop.set()
    for reader in readers:
        reader.join()
    assert waited < 0.1, waited


def test_changes_wait_for_the_searches_under_way_but_not_forever():
    """A search's lookups are not interleaved with a follower's batches: the batch waits
    until the search ends, or its patience runs out under a stream of searches."""
    import numpy as np

    from gallery.index.vector_index import VectorIndex

    index = VectorIndex.create("m", 8)
    index._searches.patience = 5.0
    added = threading.Event()
    vectors = np.eye(8, dtype=np.float32)

    def follower() -> None:
        index.add([1, 2], vectors[:2])
        added.set()

    with index.searching():
        thread = threading.Thread(target=follower)
        thread.start()
        assert not added.wait(0.3)  # the search is under way
    assert added.wait(2)
    thread.join()
    assert index.labels() == {1, 2}

    gate = SearchesFirst(patience=0.2)
    with gate.searching():
        asked = time.monotonic()
        gate.wait()
        assert 0.15 < time.monotonic() - asked < 1.0
