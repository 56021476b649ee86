"""An hnswlib index's items' perceptual hashes, as `VectorIndex` holds them."""

import numpy as np

from ..retrieval.hashes import HASH_BYTES, HashIndex, HashIndexView, merge_due, smallest_distances
from .files import hash_arrays


class HeldHashes:
    """label -> PDQ hash, and the multi-index tables over them (`view`): built once, the
    changes since kept beside them until a merge is due. The owner's lock guards both."""

    def __init__(self, codes: dict[int, bytes] | None = None) -> None:
        self.codes: dict[int, bytes] = codes or {}
        self._base: HashIndex | None = None  # built from codes; changes since kept apart
        self._added: dict[int, bytes] = {}
        self._removed: set[int] = set()
        self._view: HashIndexView | None = None

    def __len__(self) -> int:
        return len(self.codes)

    def set(self, label: int, code: bytes) -> None:
        if self.codes.get(label) == code:
            return
        self.codes[label] = code
        self._added[label] = code
        self._view = None

    def drop(self, label: int) -> None:
        if self.codes.pop(label, None) is not None:
            self._added.pop(label, None)
            self._removed.add(label)
            self._view = None

    def distances(self, labels: list[int], queries: np.ndarray) -> dict[int, int]:
        """The smallest distance of each given item's hash to any of the query hashes (items
        without one left out), from the hashes themselves: no tables are built (the index
        writer notes each upload's copy this way; building them costs seconds at a million)."""
        held = [label for label in labels if label in self.codes]
        codes = np.frombuffer(b"".join(self.codes[label] for label in held), dtype=np.uint8)
        return smallest_distances(np.array(held, dtype=np.int64), codes.reshape(-1, HASH_BYTES), queries)

    def current_view(self, *, eager: bool) -> HashIndexView | None:
        """The view, when it need not be built again (without the lock: a search's fast path)."""
        view, changed = self._view, len(self._added) + len(self._removed)
        if view is not None and not (eager and merge_due(changed, len(self.codes))):
            return view
        return None

    def view(self, *, eager: bool) -> HashIndexView:
        """The tables plus the changes since they were built, merged first when due: past a
        twentieth (`eager`: a reader's follower thread) or twice that (a search: with a
        follower it never waits for the rebuild, 1-2 s at a million)."""
        changed = len(self._added) + len(self._removed)
        if self._base is None or merge_due(changed // (1 if eager else 2), len(self.codes)):
            self._base = HashIndex(*hash_arrays(self.codes))
            self._added, self._removed = {}, set()
        self._view = HashIndexView(
            self._base,
            HashIndex(*hash_arrays(self._added)),
            excluded=self._removed | set(self._added),
            size=len(self.codes),
        )
        return self._view
