"""Training and activation on a real Celery worker: progress, cancel, resume, switch."""

import time

import pytest

from gallery import selectors, services
from gallery.embedders import active_model, forget_active_model
from gallery.models import Image, ModelVersion
from tests.conftest import wait_for_status
from tests.images import encode, make_category_folder, make_category_picture

SMALL = {"arch": "small_cnn", "image_size": 32, "batch_size": 24, "lr": 3e-3, "width": 16}


def wait_for(predicate, timeout=120, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"Timed out waiting for {what}")


def upload_colour_gallery(per_category: int, seed: int) -> list[int]:
    """Uploads pictures of the three colour categories (through the one upload path)."""
    ids = []
    for n, category in enumerate(["red", "green", "blue"] * per_category):
        image, _ = services.image_create(
            data=encode(make_category_picture(category, seed + n, (96, 96)), "PNG"), category=category
        )
        ids.append(image.pk)
    return ids


def version_where(pk, **filters):
    return ModelVersion.objects.filter(pk=pk, **filters).first()


def test_training_task_reports_progress_cancels_and_resumes(pipeline, tmp_path):
    folder = make_category_folder(tmp_path / "set", per_class=16)
    version = services.model_version_create("metric", data=str(folder), minutes=10, epochs=120, options=SMALL)
    running = wait_for(
        lambda: version_where(version.pk, state="training", progress__stage="training"),
        what="training progress",
    )
    assert running.progress["step"] > 0 and running.progress["loss"] is not None
    assert running.progress["eta_seconds"] is not None

    assert services.model_train_cancel(running)
    cancelled = wait_for(lambda: version_where(version.pk, state="cancelled"), timeout=30, what="the cancel")
    step_at_cancel = cancelled.progress["step"]
    assert (cancelled.workdir / "checkpoint.pt").exists() and not cancelled.weights_path.exists()

    assert services.model_train_resume(cancelled)
    ready = wait_for(lambda: version_where(version.pk, state="ready"), timeout=300, what="the resumed run")
    assert ready.metrics["steps"] == 240  # 120 epochs of 2 batches: it went on, it did not restart
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


def test_evaluate_button_runs_the_protocol_on_the_worker(pipeline, admin_client, tmp_path):
    from django.urls import reverse

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
