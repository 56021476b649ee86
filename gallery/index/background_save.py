"""Snapshots written by a forked child process, as Redis's BGSAVE does.

At a million items a save writes the graph (about 1.2 GB), loads it back to check it, and
writes the hashes: seconds during which the index's single writer, a process that takes one
task at a time, would make every upload wait. The child sees the index as it was at the fork
(copy-on-write pages, so the writer's changes meanwhile cost only the pages they touch); the
writer goes on applying changes and, once the child exited, takes the snapshot's bookkeeping
(`finished`). One save per index at a time."""

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .files import IndexMeta, snapshot_lock
from .vector_index import VectorIndex

logger = logging.getLogger(__name__)


@dataclass
class BackgroundSave:
    pid: int
    directory: Path
    version: int  # the snapshot's version once written
    journal_floor: int  # the journal up to here may be pruned once it is written
    full_at_fork: dict[int, np.ndarray]  # the full vectors in memory that the child writes
    started: float


_in_flight: dict[str, BackgroundSave] = {}


def start(index: VectorIndex, directory: Path) -> BackgroundSave:
    """Fork a child that saves `index` into `directory` (at a lower CPU priority: searches
    come first) and exits; the caller returns at once. `index.meta.journal_floor` must be set."""
    full_at_fork = index.full.rows_in_memory() if index.full is not None else {}
    # The child inherits the snapshot lock and holds it until it exits; this process's
    # descriptor is closed on leaving (the lock stays: the child's refers to it).
    with snapshot_lock(directory), index.unchanging():
        pid = os.fork()
        if pid == 0:  # the child: never returns, never touches the parent's connections
            code = 1
            try:
                os.nice(10)
                index.save_unlocked(directory)
                code = 0
            except BaseException:
                logger.exception("background snapshot of %s failed", directory)
            finally:
                os._exit(code)
    save = BackgroundSave(
        pid, directory, index.meta.version + 1, index.meta.journal_floor, full_at_fork, time.monotonic()
    )
    _in_flight[str(directory)] = save
    return save


def in_flight(directory: Path) -> BackgroundSave | None:
    return _in_flight.get(str(directory))


def finished(directory: Path, *, wait: bool = False) -> tuple[BackgroundSave, bool] | None:
    """The save into `directory` that ended since the last call, and whether its snapshot was
    written; None while it runs (or with none started). `wait`: until it ends."""
    save = _in_flight.get(str(directory))
    if save is None:
        return None
    try:
        pid, status = os.waitpid(save.pid, 0 if wait else os.WNOHANG)
    except ChildProcessError:  # reaped elsewhere: what it left on disk tells
        on_disk = IndexMeta.read(directory)
        del _in_flight[str(directory)]
        return save, on_disk is not None and on_disk.version == save.version
    if pid == 0:
        return None
    del _in_flight[str(directory)]
    written = os.waitstatus_to_exitcode(status) == 0
    seconds = time.monotonic() - save.started
    if written:
        logger.info("snapshot %d of %s written in the background in %.1f s", save.version, directory, seconds)
    else:
        logger.error(
            "background snapshot of %s failed after %.1f s (the journal keeps every change)",
            directory,
            seconds,
        )
    return save, written
