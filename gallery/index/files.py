"""The index's files: the snapshot's names and meta.json, atomic writes, the writers' lock."""

import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import hnswlib
import numpy as np

from ..retrieval.hashes import HASH_BYTES

INDEX_FILE = "index.bin"
HASHES_FILE = "hashes.npz"  # perceptual hashes of the items that have one (the copy index)
META_FILE = "meta.json"
LOCK_FILE = "write.lock"
SNAPSHOT_LOCK_FILE = "snapshot.lock"  # held while a snapshot's files are written
# Touched by the writer after each journal write commits: readers ask the journal (a database
# query) only when it changed, or at the latest every JOURNAL_POLL_SECONDS.
JOURNAL_HEAD_FILE = "journal.head"
JOURNAL_POLL_SECONDS = 1.0
MIN_CAPACITY = 1024


@dataclass
class IndexMeta:
    model: str
    dim: int  # numbers per vector
    views: int = 1  # vectors per item (hnswlib label = item * views + view)
    count: int = 0  # live (not deleted) items
    capacity: int = MIN_CAPACITY
    version: int = 0  # snapshots written
    deleted: list[int] = field(default_factory=list)  # labels marked deleted in index.bin
    index_bytes: int = 0  # size of the index.bin written with this version (0: not recorded)
    generation: int = 0  # a new one per rebuild: a reader of another generation loads again
    journal_seq: int = 0  # the last journal change this snapshot holds
    journal_floor: int = 0  # changes up to this one may have been pruned from the journal
    compact_dims: int = 0  # hnswlib holds vectors projected to this many numbers (0: the full ones)
    compact_learned_on: int = 0  # items the projection was learned from

    @property
    def graph_dim(self) -> int:
        """Numbers per vector in hnswlib."""
        return self.compact_dims or self.dim

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


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def hash_arrays(hashes: dict[int, bytes]) -> tuple[np.ndarray, np.ndarray]:
    labels = np.array(sorted(hashes), dtype=np.int64)
    codes = np.frombuffer(b"".join(hashes[int(label)] for label in labels), dtype=np.uint8)
    return labels, codes.reshape(len(labels), HASH_BYTES)


def load_hnsw(path: Path, dim: int, capacity: int) -> hnswlib.Index:
    hnsw = hnswlib.Index(space="cosine", dim=dim)
    hnsw.load_index(str(path), max_elements=capacity)
    return hnsw


def read_hashes(path: Path) -> dict[int, bytes]:
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


@contextlib.contextmanager
def snapshot_lock(directory: Path) -> Iterator[TextIO]:
    """Exclusive across processes while a snapshot's files are written: a writer's save, a
    rebuild, and a forked child's background save (which inherits it from the writer, so no
    other save can come between the fork and the child's first file). Yields the open lock
    file; the lock ends when every descriptor of it is closed."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / SNAPSHOT_LOCK_FILE, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield fh


def journal_head_touch(directory: Path, seq: int) -> None:
    """Tell this machine's readers that the journal grew (they stat this file)."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{JOURNAL_HEAD_FILE}.{os.getpid()}.{threading.get_ident()}.tmp"
    tmp.write_text(f"{seq}\n")
    os.replace(tmp, directory / JOURNAL_HEAD_FILE)  # a new inode each time: file times are coarse


def journal_head_stamp(directory: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(directory / JOURNAL_HEAD_FILE)
        return (st.st_mtime_ns, st.st_size, st.st_ino)
    except FileNotFoundError:
        return None
