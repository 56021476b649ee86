"""A process's view of an index: the snapshot once, then the journal."""

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .files import JOURNAL_POLL_SECONDS, META_FILE, IndexMeta, IndexUnusable, journal_head_stamp
from .journal import Journal
from .vector_index import VectorIndex

logger = logging.getLogger(__name__)


class IndexReader:
    """A process's view of one index: the snapshot loaded once and the journal's backlog
    applied before it is first served, then the journal's changes applied as they come (a
    few inline on `get`, a backlog in a background thread). A new snapshot is loaded only
    for a rebuild (new generation) or when this reader fell behind the pruned journal, in
    the background; searches keep the index they have meanwhile.

    With `follow` (seconds), a thread applies the journal instead, searches or not: a web
    process that no search reached for a while is not thousands of changes behind when one
    does (at a million items, seconds of inserts before an upload showed), and searches never
    apply changes or build the hash lookups' tables themselves (during an import, searches
    that did took 80-170 ms more at a million items, racing the thread to it)."""

    INLINE_CHANGES = 64  # without `follow`: applied within `get`; more, by a thread

    def __init__(
        self,
        directory: Path,
        ef: int = 128,
        check_interval: float = 0.0,
        journal: Journal | None = None,
        on_unusable: Callable[[Path], None] | None = None,
        follow: float = 0.0,
    ) -> None:
        self.directory = Path(directory)
        self.journal = journal
        self.on_unusable = on_unusable
        self.unusable = ""  # why the files on disk could not be loaded (empty: they could)
        self.ef = ef
        self.check_interval = check_interval
        self.follow = follow
        self._closed = threading.Event()
        self._follower: threading.Thread | None = None
        self._follows = 0  # the process whose follower thread runs
        self._index: VectorIndex | None = None
        self._stamp: tuple[int, int, int] | str | None = "not looked yet"
        self._checked_at = float("-inf")
        self._lock = threading.Lock()  # the reader's state; never held while loading
        self._applying = threading.Lock()  # one thread applies journal changes at a time
        self._loading: threading.Thread | None = None
        self._head: tuple[int, int, int] | str | None = "not looked yet"  # journal.head when last read
        self._asked_at = float("-inf")  # when the journal was last read

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
        self._checked_at = now
        self._follow_snapshots()
        index = self._index
        if index is not None and self.journal is not None and self.follow:
            if self._follows != os.getpid():  # (again in a forked child: threads do not survive)
                self._follows = os.getpid()
                self._follower = threading.Thread(target=self._follow, name="index-follower", daemon=True)
                self._follower.start()
            return index  # the follower applies the journal: a search never waits on it
        if index is not None and self.journal is not None:
            head = journal_head_stamp(self.directory)
            if head != self._head or now - self._asked_at >= JOURNAL_POLL_SECONDS:
                # A search asks several times: the database only when the writer said so.
                self._head, self._asked_at = head, now
                self._catch_up_inline(index)
        return self._index

    def _follow_snapshots(self) -> None:
        """Load the snapshot on disk when this reader has none, or when it is of another
        generation, or this reader is behind what the journal still holds."""
        with self._lock:
            stamp = self._meta_stamp()
            if stamp == self._stamp:
                return
            self._stamp = stamp
            current = self._index
            meta = IndexMeta.read(self.directory)
            if current is not None and meta is not None and self.journal is not None:
                same = meta.model == current.meta.model and meta.generation == current.meta.generation
                if same and current.meta.journal_seq >= meta.journal_floor:
                    return  # a newer snapshot of what this reader has: the journal suffices
            if current is not None and self.journal is not None:
                if self._loading is None or not self._loading.is_alive():
                    self._loading = threading.Thread(target=self._load_in_background, daemon=True)
                    self._loading.start()
                return
        loaded = self._load()  # nothing to serve meanwhile (or no journal to follow): load now
        if loaded is not None:
            if self.journal is not None:
                # All of it: served with part of the backlog, a process's first searches
                # missed the newest items (after an import of 6,000 photos into a new app,
                # a web process's first 25 searches for one the API called indexed answered
                # "similar": its snapshot was thousands of changes behind the journal until
                # the follower caught up).
                with self._applying:  # (on the caller's thread: its connections stay)
                    loaded.catch_up(self.journal)
            with self._lock:
                self._index = loaded

    def _load(self) -> VectorIndex | None:
        try:
            loaded = VectorIndex.load(self.directory, ef=self.ef)
            self.unusable = "" if loaded is not None else f"no index in {self.directory}"
        except IndexUnusable as exc:
            loaded, self.unusable = None, str(exc)
            logger.error("index unusable, serving the last good version: %s", exc)
        if loaded is None and self.on_unusable is not None:
            # Keep answering from what this process has (nothing on a fresh start); the
            # next snapshot written is tried as soon as it appears.
            self.on_unusable(self.directory)
        return loaded

    def _load_in_background(self) -> None:
        try:
            loaded = self._load()
            if loaded is not None and self.journal is not None:
                loaded.catch_up(self.journal)  # before it is seen: nobody waits on it
            if loaded is not None:
                with self._lock:
                    self._index = loaded
        except Exception:
            logger.exception("loading the index snapshot in %s failed", self.directory)
        finally:
            if self.journal is not None:
                self.journal.done()

    def _catch_up_inline(self, index: VectorIndex) -> None:
        if not self._applying.acquire(blocking=False):
            return  # the background thread is applying a backlog
        try:
            more = index.catch_up(self.journal, limit=self.INLINE_CHANGES).more  # type: ignore[arg-type]
        except Exception:
            logger.exception("applying the index journal of %s failed", self.directory)
            more = False
        finally:
            self._applying.release()
        if more:
            threading.Thread(target=self._catch_up_in_background, args=(index,), daemon=True).start()

    def _catch_up_in_background(self, index: VectorIndex) -> None:
        with self._applying:
            try:
                index.catch_up(self.journal)  # type: ignore[arg-type]
            except Exception:
                logger.exception("applying the index journal of %s failed", self.directory)
            finally:
                self.journal.done()  # type: ignore[union-attr]

    def _follow(self) -> None:
        """Every `follow` seconds: when the writer's head moved (or every JOURNAL_POLL_SECONDS),
        apply the journal to the index searches use, then build its hash view."""
        seen: tuple[int, int, int] | str | None = "not looked yet"
        asked = float("-inf")
        while not self._closed.wait(self.follow):
            index = self._index
            head = journal_head_stamp(self.directory)
            now = time.monotonic()
            if index is None or (head == seen and now - asked < JOURNAL_POLL_SECONDS):
                continue
            seen, asked = head, now
            if not self._applying.acquire(timeout=self.follow):
                continue  # a search or the backlog thread is applying
            try:
                index.catch_up(self.journal)  # type: ignore[arg-type]
                index.hash_index(eager=True)
            except Exception:
                logger.exception("following the index journal of %s failed", self.directory)
            finally:
                self._applying.release()
                self.journal.done()  # type: ignore[union-attr]

    def close(self) -> None:
        """Stop the follower thread (a reader let go)."""
        self._closed.set()
