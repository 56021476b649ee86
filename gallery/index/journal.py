"""The journal's shape as the index sees it: where changes after a snapshot are read from."""

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class JournalBatch:
    """Changes read from the journal, collapsed (the last change of a label wins)."""

    seq: int  # the last change read
    labels: list[int]  # added or replaced
    vectors: np.ndarray  # one row per label
    hashes: list[bytes | None]  # one per label (the copy model's index only; else empty)
    removed: list[int]
    more: bool  # the journal holds more changes after `seq`


class Journal(Protocol):
    """Where the changes after a snapshot are read (the database, in the app)."""

    def read(self, model: str, after: int, limit: int) -> JournalBatch | None:
        """At most `limit` changes after `after`, or None when there are none."""

    def done(self) -> None:
        """A background thread stops using the journal (e.g. closes its connections)."""


@dataclass
class CatchUp:
    """What `VectorIndex.catch_up` applied."""

    added: int = 0
    removed: int = 0
    more: bool = False  # stopped at its limit with changes left
