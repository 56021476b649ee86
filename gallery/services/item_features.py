"""Each catalogue photo's local features (ORB and SIFT, `retrieval.verify.item_features`)
kept in the media storage beside the photo (`retrieval.features_file`), computed after the
photo is embedded (the `embed_later` queue: an import is searchable as soon as before; these
took 30-40 ms a photo): verification reads them instead of computing them in every web process
for every query that checks the item (a query whose photo is not in the catalogue checks
30-40 candidates; their features took about 240 ms of it). A photo without them (stored
before they were kept, or its file missing then) is still verified: its features are
computed at search time, as before."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from .. import queues
from ..models import Image
from ..retrieval.features_file import encode, stored_name
from ..retrieval.verify import Detector, item_features
from ..selectors.operations import queue_depth
from ..selectors.search_checks import stored_photo
from . import dispatch
from .embedding import EMBEDDING_BUSY_SECONDS, embedding_busy

LOWEST_PRIORITY = 19  # nice
_T = TypeVar("_T")


def item_features_store(image_ids: list[int]) -> int:
    """Compute and keep the features the images lack; returns how many files were written.
    Idempotent. A photo that cannot be read is skipped (verification then finds no
    features for it, as at search time). The work runs at the lowest CPU priority
    (`at_lowest_priority`). While a process embeds (`embedding.embedding_busy`), the rest
    waits a moment; when embedding work comes in meanwhile (an upload, an import's next
    batch), the rest goes back to the queue: it waited 1-1.5 s for a batch of 32 otherwise."""
    written = 0
    files = list(Image.objects.filter(pk__in=image_ids).values_list("pk", "file"))
    for n, (_, file_name) in enumerate(files):
        if embedding_busy():  # even at nice 19 they slowed it (0.79 -> 1.06 s to searchable)
            dispatch.item_features_store([pk for pk, _ in files[n:]], countdown=EMBEDDING_BUSY_SECONDS)
            break
        if n and _embedding_waits():
            dispatch.item_features_store([pk for pk, _ in files[n:]])
            break
        written += at_lowest_priority(_keep_features, file_name)
    return written


def _keep_features(file_name: str) -> int:
    """The photo's features that are not kept yet, computed and kept; how many."""
    missing = [d for d in Detector if not default_storage.exists(stored_name(file_name, d))]
    photo = stored_photo(file_name) if file_name and missing else None
    if photo is None:
        return 0
    for detector in missing:
        _keep(stored_name(file_name, detector), encode(item_features(photo, detector)))
    return len(missing)


def at_lowest_priority(work: Callable[..., _T], *args: Any) -> _T:
    """`work(*args)` in a thread of its own at nice 19 (Linux keeps a nice value per thread):
    the embedding worker's other process, the web and the index worker, all at a higher
    priority, keep the cores while it runs (an upload took 0.79 s to be searchable after an
    import of 10,000 photos, 1.08 s while both processes computed features at their own
    priority). The thread ends with the work, so the process's priority is unchanged."""
    outcome: list[_T] = []
    failure: list[BaseException] = []

    def run() -> None:
        with contextlib.suppress(OSError):  # (a system that refuses: at the usual priority)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOWEST_PRIORITY)
        try:
            outcome.append(work(*args))
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="item-features")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


def _embedding_waits() -> bool:
    """Vectors or hashes wait in the embed worker's queues (taken before these features)."""
    try:
        return any(queue_depth(queue) > 0 for queue in (queues.EMBED, queues.EMBED_BULK))
    except Exception:  # the broker cannot be asked: go on
        return False


def _keep(name: str, data: bytes) -> None:
    """Store `data` under exactly `name`: when another process stored it meanwhile, the
    storage picks another name for this copy, which is removed (the two are the same)."""
    saved = default_storage.save(name, ContentFile(data))
    if saved != name:
        default_storage.delete(saved)
