"""What a visitor waits on goes before bulk work queued earlier (gallery/queues.py): an upload
sent while an import's batches wait is embedded and indexed next, by the real worker."""

import time

from gallery import queues, services
from gallery.models import Embedding, Image, ImportItem
from gallery.services import dispatch
from tests.conftest import wait_for_status
from tests.images import make_image_bytes


def test_bulk_work_goes_to_the_bulk_queues():
    assert queues.queue_of("images_embed") == queues.EMBED
    assert queues.queue_of("images_embed", bulk=True) == queues.EMBED_BULK
    assert queues.queue_of("index_sync", bulk=True) == queues.INDEX_BULK
    assert queues.queue_of("import_job_process") == queues.EMBED_BULK
    assert queues.queue_of("model_train", bulk=True) == queues.TRAIN  # a worker of one queue
    for worker in (queues.EMBED_WORKER, queues.INDEX_WORKER):
        visitor, bulk = worker[:2]
        assert queues.ALL.index(visitor) < queues.ALL.index(bulk)
    assert queues.queue_of("item_features_store") == queues.EMBED_WORKER[-1] == queues.EMBED_LATER


def test_an_upload_overtakes_an_import_queued_before_it(pipeline, tmp_path, settings):
    settings.EMBED_BATCH_SIZE = 4  # 12 batches on the bulk queue
    folder = tmp_path / "catalogue"
    folder.mkdir()
    for n in range(48):
        (folder / f"{n:02d}.jpg").write_bytes(make_image_bytes(3000 + n))
    job = services.import_job_create(kind="folder", path=folder)
    services.import_job_start(job)
    upload, _ = services.image_create(data=make_image_bytes(9999), title="a visitor's photo")
    wait_for_status([upload.pk])
    upload.refresh_from_db()
    job_items = ImportItem.objects.filter(job=job)
    deadline = time.monotonic() + 180
    while job_items.filter(image__isnull=True).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    imported = list(job_items.values_list("image_id", flat=True))
    assert None not in imported, list(job_items.values_list("state", "error"))
    wait_for_status(imported)
    # In one queue, the upload came after all 12 batches; first in its own, after one or two.
    later = Image.objects.filter(pk__in=imported, indexed_at__gt=upload.indexed_at).count()
    assert later >= 24, f"only {later} of 48 imported photos were indexed after the upload"


def test_a_bulk_batch_hands_over_to_an_upload_that_waits(pipeline, settings):
    """A bulk batch takes its worker process for seconds: between parts of BULK_CHUNK images it
    looks for a waiting upload, and if one waits sends the rest back to the bulk queue."""
    settings.EMBED_BATCH_SIZE = 96  # one task for the whole batch: 12 parts
    batch = [
        services.image_create(data=make_image_bytes(4000 + n), title=f"bulk {n}", enqueue=False)[0].pk
        for n in range(96)
    ]
    dispatch.images_embed(batch, bulk=True)
    # The upload comes once the worker has stored the batch's first part (waiting a fixed
    # time instead, a fast machine had embedded most of the batch before the upload came).
    deadline = time.monotonic() + 60
    while not Embedding.objects.filter(image_id__in=batch).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    upload, _ = services.image_create(data=make_image_bytes(9998), title="a visitor's photo")
    wait_for_status([upload.pk])
    wait_for_status(batch)
    upload.refresh_from_db()
    # Without the hand-over the upload came after all 96 (and its index update took them all).
    later = Image.objects.filter(pk__in=batch, indexed_at__gt=upload.indexed_at).count()
    assert later >= 48, f"only {later} of 96 were indexed after the upload"
    assert not Image.objects.filter(pk__in=batch, embed_attempts__gt=1).exists()  # not counted twice
