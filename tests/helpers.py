"""What many tests do: upload, process in-process, wait for the worker, train a tiny model."""

import time

from django.core.files.uploadedfile import SimpleUploadedFile

from gallery import services
from gallery.models import ModelVersion
from tests.images import encode, make_category_picture, make_image_bytes


def media_files(settings):
    return sorted(p for p in settings.MEDIA_ROOT.rglob("*") if p.is_file())


def embed_and_index(*ids):
    """What the workers do, in-process (the worker path is covered in test_tasks/test_pipeline)."""
    services.images_embed(list(ids))
    services.index_sync(note_copies=list(ids))  # as images_embed asks the index worker


def api_upload(client, seed, **fields):
    return client.post(
        "/api/images", {"image": SimpleUploadedFile(f"{seed}.jpg", make_image_bytes(seed)), **fields}
    )


def search_ids(client, seed):
    body = client.post("/api/search", {"image": SimpleUploadedFile("q.jpg", make_image_bytes(seed))}).json()
    return [r["id"] for r in body["results"]]


SMALL = {"arch": "small_cnn", "image_size": 32, "batch_size": 24, "lr": 3e-3, "width": 16}


def train_small(kind="metric", bits=0, **extra):
    version = services.model_version_create(
        kind, epochs=40, minutes=5, bits=bits, options={**SMALL, **extra}, start=False
    )
    version = services.model_train(version.pk)
    assert version.state == ModelVersion.State.READY, version.error
    return version


def wait_for(predicate, timeout=120, what="condition", log=None):
    """`predicate()`'s first true value; on timeout the tail of the worker's `log`, if given,
    goes into the failure (a fault seen once under load is then readable from CI's output)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    tail = f"\nThe worker's log ends:\n{log.read_text()[-4000:]}" if log is not None and log.exists() else ""
    raise AssertionError(f"Timed out waiting for {what}{tail}")


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
