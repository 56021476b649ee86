"""Near-duplicate scans: the copy index grouped into copies of one picture, as a background
task whose groups are stored for the staff page (a scan of a large gallery takes minutes; a
page must not); and the note on a new upload of the item it copies."""

import logging

import numpy as np
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.db import transaction
from django.utils import timezone

from ..embedders import copy_model, torch_free_embedder
from ..imaging import ImageRejected
from ..models import DuplicateGroupRow, DuplicateScan, Embedding, Image
from ..selectors.index_journal import index_current
from ..selectors.moderation import near_duplicate_groups
from ..selectors.search import SearchIndex, pgvector_index, vectors_in_database
from ..selectors.search_by_image import upload_copy_of
from . import dispatch
from .inputs import acting_user

logger = logging.getLogger(__name__)


def duplicate_scan_start(*, user: AbstractBaseUser | AnonymousUser | None = None) -> DuplicateScan:
    """Queue a scan, unless one is queued or running already (that one is returned)."""
    waiting = DuplicateScan.objects.filter(
        state__in=[DuplicateScan.State.QUEUED, DuplicateScan.State.RUNNING]
    )
    scan = waiting.order_by("-created_at").first()
    if scan is not None:
        return scan
    scan = DuplicateScan.objects.create(started_by=acting_user(user))
    dispatch.duplicate_scan_run(scan.pk)
    return scan


def duplicate_scan_run(scan_id: int) -> int:
    """The scan (the task): every copy group of the searchable items, stored with the scan;
    the groups of earlier scans are deleted. Returns the number of groups. Running it again
    (a redelivered task) starts the scan over; a finished scan is left as it is."""
    scan = DuplicateScan.objects.filter(pk=scan_id).first()
    if scan is None or scan.state == DuplicateScan.State.DONE:
        return 0
    DuplicateScan.objects.filter(pk=scan.pk).update(
        state=DuplicateScan.State.RUNNING, started_at=timezone.now(), error=""
    )
    try:
        ref = copy_model()
        # this process's own, fully caught-up copy of the files, or the database's index
        index = pgvector_index(ref) if vectors_in_database() else index_current(ref.index_dir)
        groups = near_duplicate_groups(index=index, limit=None) if index is not None else []
        rows = [
            DuplicateGroupRow(scan=scan, rank=rank, members=[[im.pk, text] for im, text in group.members])
            for rank, group in enumerate(groups)
        ]
        with transaction.atomic():
            scan.groups.all().delete()
            DuplicateGroupRow.objects.bulk_create(rows, batch_size=1000)
            DuplicateScan.objects.filter(pk=scan.pk).update(
                state=DuplicateScan.State.DONE, finished_at=timezone.now(), items=len(index) if index else 0
            )
            DuplicateScan.objects.filter(state=DuplicateScan.State.DONE).exclude(pk=scan.pk).delete()
    except Exception as exc:
        DuplicateScan.objects.filter(pk=scan.pk).update(
            state=DuplicateScan.State.FAILED, finished_at=timezone.now(), error=f"{type(exc).__name__}: {exc}"
        )
        raise
    return len(rows)


def near_duplicates_note(index: SearchIndex, image_ids: list[int]) -> int:
    """Record on each of these new uploads the existing item it is a copy of, and why, by
    search's own stages and tiers (`search_by_image.upload_copy_of`: a turned, cropped,
    recoloured or marked copy too, not only one whose hash is near), for staff and
    uploaders. The index writer calls it with the copy index it holds, once the items are in
    it: no other process has to load that index for it (1.4 GB at a million items). A file
    that cannot be read is logged and left unnoted. Returns the copies noted."""
    if len(index) == 0:
        return 0
    ref = copy_model()
    images = Image.objects.filter(pk__in=image_ids).in_bulk()
    rows = Embedding.objects.filter(image_id__in=list(images), model_name=ref.name)
    embedder = torch_free_embedder(ref)  # this process never loads torch: no graph, no regions
    embed = embedder.embed if embedder is not None else None
    noted = 0
    for image_id, vector in rows.values_list("image_id", "vector"):
        try:
            stored = np.frombuffer(bytes(vector), dtype=np.float32)
            found = upload_copy_of(index, images[image_id], stored, embed)
        except (OSError, ImageRejected) as exc:
            logger.warning("no copy note for image %s: its file cannot be read (%s)", image_id, exc)
            continue
        if found is not None:
            label, decision = found
            Image.objects.filter(pk=image_id).update(
                near_duplicate_of_id=label, near_duplicate_explanation=decision.explanation[:200]
            )
            noted += 1
    return noted
