"""The Celery tasks on a real worker process: failures are recorded, stale tasks never bring a
hidden item back, and lost tasks are picked up again."""

import time

from django.core.files.storage import default_storage

from gallery import services, tasks
from gallery.index import VectorIndex
from gallery.models import Image
from tests.conftest import wait_for_status
from tests.images import make_image_bytes


def test_unreadable_file_is_marked_failed_with_the_reason(pipeline):
    image, _ = services.image_create(data=make_image_bytes(100), enqueue=False)
    default_storage.delete(image.file.name)
    tasks.images_embed.delay([image.pk])
    wait_for_status([image.pk], "failed")
    image.refresh_from_db()
    assert "cannot be read" in image.error


def test_stale_tasks_do_not_bring_a_hidden_item_back(pipeline, clean_index):
    keep, _ = services.image_create(data=make_image_bytes(101))
    gone, _ = services.image_create(data=make_image_bytes(102))
    wait_for_status([keep.pk, gone.pk])
    Image.objects.filter(pk=gone.pk).update(status=Image.Status.HIDDEN)
    tasks.index_remove.delay([gone.pk])
    # replayed (stale) tasks for the hidden item
    tasks.images_embed.delay([gone.pk])
    tasks.index_sync.delay()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        index = VectorIndex.load(clean_index)
        if index is not None and gone.pk not in index.labels():
            break
        time.sleep(0.2)
    time.sleep(1)  # let the replayed tasks run too
    index = VectorIndex.load(clean_index)
    assert index.labels() == {keep.pk}
    assert Image.objects.get(pk=gone.pk).status == Image.Status.HIDDEN


def test_lost_tasks_are_queued_again(pipeline):
    images = [services.image_create(data=make_image_bytes(seed), enqueue=False)[0] for seed in (103, 104)]
    time.sleep(1)
    assert set(Image.objects.filter(pk__in=[i.pk for i in images]).values_list("status", flat=True)) == {
        "processing"
    }
    assert services.images_enqueue_pending() == 2
    wait_for_status([i.pk for i in images])


def test_embedding_twice_is_harmless(pipeline):
    image, _ = services.image_create(data=make_image_bytes(105))
    tasks.images_embed.delay([image.pk])
    tasks.images_embed.delay([image.pk])
    wait_for_status([image.pk])
    time.sleep(1)
    assert image.embeddings.count() == 1


def test_hide_and_unhide_through_the_services(pipeline, clean_index):
    from django.db import transaction

    image, _ = services.image_create(data=make_image_bytes(106))
    wait_for_status([image.pk])
    with transaction.atomic():
        assert services.images_moderate([image.pk], "hide") == 1
    deadline = time.monotonic() + 30
    while image.pk in VectorIndex.load(clean_index).labels():
        assert time.monotonic() < deadline, "hidden item still in the index"
        time.sleep(0.2)
    with transaction.atomic():
        assert services.images_moderate([image.pk], "unhide") == 1
    wait_for_status([image.pk])
    assert image.pk in VectorIndex.load(clean_index).labels()
    assert image.embeddings.count() == 1  # the stored embedding was reused


def test_recover_lost_work_requeues_stale_images_and_stalled_jobs(pipeline, tmp_path, settings):
    from django.utils import timezone

    from gallery.models import ImportJob

    image, _ = services.image_create(data=make_image_bytes(107), enqueue=False)  # its task was "lost"
    Image.objects.filter(pk=image.pk).update(updated_at=timezone.now() - timezone.timedelta(hours=1))
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "a.jpg").write_bytes(make_image_bytes(108))
    job = services.import_job_create(kind="folder", path=tmp_path / "cat")  # never dispatched
    ImportJob.objects.filter(pk=job.pk).update(updated_at=timezone.now() - timezone.timedelta(hours=1))
    assert services.recover_lost_work() == {"jobs": 1, "images": 1, "models": 0}
    wait_for_status([image.pk])
    deadline = time.monotonic() + 60
    while ImportJob.objects.get(pk=job.pk).state != "done":
        assert time.monotonic() < deadline
        time.sleep(0.3)


def test_stall_check_sees_messages_waiting_in_the_queue(redis_url):
    """A job waiting behind queued work is not stalled: the check looks at the queue."""
    import redis as redis_client

    from searchsite.celery import app

    url = redis_url.rsplit("/", 1)[0] + "/12"  # a broker database no worker consumes
    redis_client.Redis.from_url(url).flushdb()
    assert services.queue_has_work("embed", url) is False
    with app.connection_for_write(url) as conn:
        conn.SimpleQueue("embed").put({"waiting": True})
    assert services.queue_has_work("embed", url) is True
    assert services.queue_has_work("embed", "redis://127.0.0.1:1/0") is True  # cannot ask: assume busy
    redis_client.Redis.from_url(url).flushdb()
