"""The hnswlib (cosine) index: a snapshot on disk, a journal of changes, one writer, many readers.

Files in INDEX_DIR: `index.bin` (hnswlib), `hashes.npz` and `meta.json` (model, dim, count,
generation, the last journal change the snapshot holds). Each is replaced atomically (temporary
file, fsync, rename, fsync of the folder), so a reader never sees half a file. Writers hold an
exclusive `flock` on `write.lock`, so the Celery index worker, `manage.py rebuild_index` and an
activation never write at the same time.

An update does not rewrite the snapshot: the writer appends the change to the journal (the
`IndexChange` table) and every process replays the journal onto the snapshot it loaded (a
`Journal`, given by the caller: this module knows no database). Snapshots are written rarely,
so a process that starts has little to replay; a reader loads a snapshot again only when the
index was rebuilt (a new generation) or it fell behind the journal's pruned part, and then in a
background thread, swapping the new index in once it is loaded and caught up.

hnswlib traps handled here: `ef` is not saved (set after every load); adding past capacity
raises (grow first); k larger than the live count raises (clamp and retry); `add_items` must not
run alongside `knn_query` (a read/write lock per index); re-adding a label marked deleted
silently un-deletes it (the journal is replayed in order, and callers check the database
first); `save_index` does not report a failed write (a full disk leaves a truncated file), so
every written file is loaded back and checked before it replaces the last good one, and
meta.json records its size. A reader that cannot load a snapshot keeps serving the one it has
and says so (`on_unusable`: the app then asks the writer to rebuild from the database)."""

from . import background_save
from .files import (
    HASHES_FILE,
    INDEX_FILE,
    LOCK_FILE,
    META_FILE,
    MIN_CAPACITY,
    IndexMeta,
    IndexUnusable,
    IndexWriteFailed,
    journal_head_touch,
    snapshot_lock,
    write_lock,
)
from .journal import CatchUp, Journal, JournalBatch
from .reader import IndexReader
from .rwlock import ReadWriteLock
from .sign_codes import POPCOUNT
from .vector_index import VectorIndex

__all__ = [
    "HASHES_FILE",
    "INDEX_FILE",
    "LOCK_FILE",
    "META_FILE",
    "MIN_CAPACITY",
    "POPCOUNT",
    "CatchUp",
    "IndexMeta",
    "IndexReader",
    "IndexUnusable",
    "IndexWriteFailed",
    "Journal",
    "JournalBatch",
    "ReadWriteLock",
    "VectorIndex",
    "background_save",
    "journal_head_touch",
    "snapshot_lock",
    "write_lock",
]
