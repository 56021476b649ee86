"""Upload → real Celery worker embeds → index → search, end to end through the API."""

import time

from django.test import Client

from gallery.models import Image
from tests.conftest import wait_for_status
from tests.images import encode, make_image_bytes, make_picture


def upload(client, seed, **fields):
    data = make_image_bytes(seed)
    from django.core.files.uploadedfile import SimpleUploadedFile

    return client.post("/api/images", {"image": SimpleUploadedFile(f"p{seed}.jpg", data), **fields})


def test_uploaded_images_become_searchable(pipeline):
    client = Client()
    ids = [
        upload(client, seed, title=f"pic {seed}", category="odd" if seed % 2 else "even").json()["id"]
        for seed in range(6)
    ]
    wait_for_status(ids)
    from django.core.files.uploadedfile import SimpleUploadedFile

    query = encode(make_picture(3).resize((480, 360)), "JPEG", quality=60)
    body = client.post("/api/search", {"image": SimpleUploadedFile("q.jpg", query), "k": 3}).json()
    assert body["results"][0]["id"] == ids[3]
    assert body["results"][0]["title"] == "pic 3"
    assert len(body["results"]) == 3
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)
    assert Image.objects.get(pk=ids[3]).indexed_at is not None


def test_the_worker_keeps_each_uploaded_photo_s_local_features_after_it_is_searchable(pipeline):
    """Searchable first; then, from the worker's `embed_later` queue, each photo's features
    for verification, in the files searches read (`services.item_features`)."""
    from django.core.files.storage import default_storage

    from gallery.retrieval.features_file import stored_name
    from gallery.retrieval.verify import Detector

    client = Client()
    ids = [upload(client, seed).json()["id"] for seed in (11, 12)]
    wait_for_status(ids)
    names = [
        stored_name(name, d)
        for name in Image.objects.filter(pk__in=ids).values_list("file", flat=True)
        for d in Detector
    ]
    deadline = time.monotonic() + 60
    while not all(default_storage.exists(n) for n in names) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [n for n in names if not default_storage.exists(n)] == []


def test_an_uploaded_copy_is_noted_by_the_index_worker(pipeline):
    """The embed worker asks the index worker, which holds the copy index, to note which
    existing item an upload copies (the embed processes never load that index)."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    client = Client()
    original = upload(client, 11, title="original").json()["id"]
    other = upload(client, 12, title="other").json()["id"]
    wait_for_status([original, other])
    copy = encode(make_picture(11).resize((480, 360)), "JPEG", quality=60)
    copy_id = client.post("/api/images", {"image": SimpleUploadedFile("copy.jpg", copy)}).json()["id"]
    wait_for_status([copy_id])
    deadline = time.monotonic() + 30
    while Image.objects.get(pk=copy_id).near_duplicate_of_id is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert Image.objects.get(pk=copy_id).near_duplicate_of_id == original
    assert Image.objects.get(pk=other).near_duplicate_of_id is None
