"""Each catalogue photo's local features (ORB and SIFT, `retrieval.verify.item_features`)
kept in the media storage beside the photo (`retrieval.features_file`), computed after the
photo is embedded (the `embed_later` queue: an import is searchable as soon as before; these
took 30-40 ms a photo): verification reads them instead of computing them in every web process
for every query that checks the item (a query whose photo is not in the catalogue checks
30-40 candidates; their features took about 240 ms of it). A photo without them (stored
before they were kept, or its file missing then) is still verified: its features are
computed at search time, as before."""

from __future__ import annotations

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from .. import queues
from ..models import Image
from ..retrieval.features_file import encode, stored_name
from ..retrieval.verify import Detector, item_features
from ..selectors.operations import queue_depth
from ..selectors.search_checks import stored_photo
from . import dispatch


def item_features_store(image_ids: list[int]) -> int:
    """Compute and keep the features the images lack; returns how many files were written.
    Idempotent. A photo that cannot be read is skipped (verification then finds no
    features for it, as at search time). When embedding work comes in meanwhile (an upload,
    an import's next batch), the rest goes back to the queue: it waited 1-1.5 s for a batch
    of 32 otherwise."""
    written = 0
    files = list(Image.objects.filter(pk__in=image_ids).values_list("pk", "file"))
    for n, (_, file_name) in enumerate(files):
        if n and _embedding_waits():
            dispatch.item_features_store([pk for pk, _ in files[n:]])
            break
        missing = [d for d in Detector if not default_storage.exists(stored_name(file_name, d))]
        photo = stored_photo(file_name) if file_name and missing else None
        if photo is None:
            continue
        for detector in missing:
            _keep(stored_name(file_name, detector), encode(item_features(photo, detector)))
            written += 1
    return written


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
