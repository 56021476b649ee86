"""The Celery tasks on a real worker process: failures are recorded, stale tasks never bring a
hidden item back, lost tasks are picked up again; training, evaluation and activation runs."""

import json
import time

import pytest
from django.core.files.storage import default_storage
from django.test import Client
from django.urls import reverse

from gallery import selectors, services, tasks
from gallery.embedders import active_model, forget_active_model, loaded_embedders, model_ref, served_models
from gallery.index import IndexUnusable, VectorIndex
from gallery.models import Image, ModelVersion
from gallery.selectors.index_journal import index_current
from tests.conftest import wait_for_status
from tests.helpers import (
    SMALL,
    api_upload,
    search_ids,
    upload_colour_gallery,
    version_where,
    wait_for,
)
from tests.images import encode, make_category_folder, make_category_picture, make_image_bytes


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
        index = index_current(clean_index)
        if index is not None and gone.pk not in index.labels():
            break
        time.sleep(0.2)
    time.sleep(1)  # let the replayed tasks run too
    index = index_current(clean_index)
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


def test_a_corrupt_index_on_disk_is_rebuilt_in_the_background_while_search_answers(pipeline):
    """A truncated index.bin installed under a newer meta.json (the disk-full fault): a web
    process that starts then cannot load it, answers anyway (an exact scan of the stored
    vectors), and asks the worker, which rebuilds it from the database."""
    client = Client()
    ids = [api_upload(client, seed).json()["id"] for seed in (121, 122)]
    wait_for_status(ids)
    directory = active_model().index_dir
    meta = json.loads((directory / "meta.json").read_text())
    with open(directory / "index.bin", "r+b") as fh:
        fh.truncate(meta["index_bytes"] // 3)
    meta["version"] += 1
    (directory / "meta.json").write_text(json.dumps(meta))
    selectors.index_readers_forget()  # as a web process starting now
    # Answers at once: from an exact scan of the database's vectors, or the rebuilt index.
    assert ids[0] in search_ids(client, 121)

    def rebuilt() -> bool:
        try:
            return VectorIndex.load(directory) is not None
        except IndexUnusable:
            return False

    wait_for(rebuilt, timeout=60, what="the rebuilt index")
    assert ids[0] in search_ids(client, 121)


def test_embedding_twice_is_harmless(pipeline):
    image, _ = services.image_create(data=make_image_bytes(105))
    tasks.images_embed.delay([image.pk])
    tasks.images_embed.delay([image.pk])
    wait_for_status([image.pk])
    time.sleep(1)
    assert image.embeddings.count() == len(served_models())  # one vector per served model


def test_hide_and_unhide_through_the_services(pipeline, clean_index):
    from django.db import transaction

    image, _ = services.image_create(data=make_image_bytes(106))
    wait_for_status([image.pk])
    with transaction.atomic():
        assert services.images_moderate([image.pk], "hide") == 1
    deadline = time.monotonic() + 30
    while image.pk in index_current(clean_index).labels():
        assert time.monotonic() < deadline, "hidden item still in the index"
        time.sleep(0.2)
    with transaction.atomic():
        assert services.images_moderate([image.pk], "unhide") == 1
    wait_for_status([image.pk])
    assert image.pk in index_current(clean_index).labels()
    assert image.embeddings.count() == len(served_models())  # the stored vectors were reused


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


def test_with_an_empty_queue_lost_images_are_found_within_half_a_minute(pipeline):
    """After a broker restart the queue is empty: what the database says is waiting has no
    task left, and the safety net (every 30 s) queues it again after 20 s, not 10 minutes."""
    from django.utils import timezone

    fresh, _ = services.image_create(data=make_image_bytes(109), enqueue=False)
    lost, _ = services.image_create(data=make_image_bytes(110), enqueue=False)
    Image.objects.filter(pk=lost.pk).update(updated_at=timezone.now() - timezone.timedelta(seconds=25))
    assert services.recover_lost_work()["images"] == 1  # the fresh one may still get its task
    wait_for_status([lost.pk])
    assert Image.objects.get(pk=fresh.pk).status == "processing"


def test_the_index_is_reconciled_with_the_database(pipeline):
    """An approved item whose index update was lost, and an item the index kept after it was
    hidden: the writer's reconciliation (beat, every 2 minutes) puts both right."""
    from gallery.models import IndexChange

    client = Client()
    ids = [api_upload(client, seed).json()["id"] for seed in (131, 132)]
    wait_for_status(ids)
    ref = active_model()
    # As if the approval's update had been lost: the item leaves the index, not the database.
    IndexChange.objects.create(model_name=ref.name, image_id=ids[0], op=IndexChange.Op.REMOVE)
    Image.objects.filter(pk=ids[1]).update(status=Image.Status.HIDDEN)  # its removal "lost"
    wait_for(lambda: ids[0] not in search_ids(client, 131), what="the damaged index served")
    assert tasks.index_reconcile.delay() is not None
    wait_for(lambda: ids[0] in search_ids(client, 131), timeout=60, what="the reconciled index")
    assert ids[1] not in index_current(ref.index_dir).labels()


def test_training_task_reports_progress_cancels_and_resumes(pipeline, tmp_path):
    folder = make_category_folder(tmp_path / "set", per_class=16)
    # Long enough to be cancelled on a fast day: 240 steps ran in 2 s here, before the cancel
    # was read (the trainer reads it every 2 s), and the run ended "ready".
    version = services.model_version_create("metric", data=str(folder), minutes=10, epochs=600, options=SMALL)
    running = wait_for(
        lambda: version_where(version.pk, state="training", progress__stage="training"),
        what="training progress",
    )
    assert running.progress["step"] > 0 and running.progress["loss"] is not None
    assert running.progress["eta_seconds"] is not None

    assert services.model_train_cancel(running)
    cancelled = wait_for(
        lambda: version_where(version.pk, state="cancelled"),
        timeout=30,
        what="the cancel",
        log=pipeline["log"],
    )
    step_at_cancel = cancelled.progress["step"]
    assert (cancelled.workdir / "checkpoint.pt").exists() and not cancelled.weights_path.exists()

    assert services.model_train_resume(cancelled)
    # 1,200 steps: 19 s alone, over 300 s once with two benches beside the suite
    ready = wait_for(
        lambda: version_where(version.pk, state="ready"),
        timeout=900,
        what="the resumed run",
        log=pipeline["log"],
    )
    assert ready.metrics["steps"] == 1200  # 600 epochs of 2 batches: it went on, it did not restart
    assert ready.progress["step"] >= step_at_cancel
    assert "cancelled" in ready.log and "done" in ready.log


def test_activation_task_switches_the_searches(pipeline):
    wait_for_status(upload_colour_gallery(4, seed=300))
    services.model_version_default()
    version = services.model_version_create("metric", epochs=10, minutes=5, options=SMALL)
    wait_for(lambda: version_where(version.pk, state="ready"), timeout=300, what="training on the gallery")

    services.model_activate_start(ModelVersion.objects.get(pk=version.pk))
    active = wait_for(lambda: version_where(version.pk, is_active=True), timeout=120, what="the switch")
    assert active.activation_progress["done"] == 12
    forget_active_model()
    assert active_model().name == version.name
    hits = selectors.image_search_by_image(encode(make_category_picture("red", 7, (96, 96)), "PNG"), k=4).hits
    assert [h.image.category for h in hits] == ["red"] * 4

    # an upload after the switch is embedded by the worker with the new model
    late, _ = services.image_create(
        data=encode(make_category_picture("blue", 808, (96, 96)), "PNG"), category="blue"
    )
    wait_for_status([late.pk])
    assert late.embeddings.filter(model_name=version.name).exists()
    assert Image.objects.get(pk=late.pk).status == Image.Status.INDEXED

    # switched back: this process lets go of the learned model's network and index
    assert version.name in loaded_embedders()
    default = services.model_version_default()
    services.model_activate_start(default)
    wait_for(lambda: version_where(default.pk, is_active=True), timeout=120, what="the switch back")
    forget_active_model()
    selectors.image_search_by_image(encode(make_category_picture("red", 7, (96, 96)), "PNG"), k=4)
    assert loaded_embedders() == sorted(ref.name for ref in served_models())
    assert str(model_ref(active).index_dir) not in [
        str(r.directory) for r in selectors.search._readers.values()
    ]


def test_evaluate_button_runs_the_protocol_on_the_worker(pipeline, admin_client, tmp_path, settings):
    settings.IMPORT_ROOT = tmp_path

    data = make_category_folder(tmp_path / "cifar-like", per_class=3, splits=("train", "test"))
    version = services.model_version_default()
    response = admin_client.post(
        reverse("admin:gallery_modelversion_evaluate", args=[version.pk]),
        {"protocol": "cifar10", "data": str(data)},
        follow=True,
    )
    assert "Evaluation cifar10 queued" in response.content.decode()
    done = wait_for(lambda: version_where(version.pk, progress__stage="evaluated"), what="the evaluation")
    figures = done.evaluations["cifar10"]
    assert figures["queries"] == 9 and 0.0 <= figures["map@1000"] <= 1.0
    assert (done.workdir / "confusion-cifar10.png").is_file()


@pytest.fixture(autouse=True)
def _forget_active_model():
    forget_active_model()
    yield
    forget_active_model()
