"""Upload → real Celery worker embeds → index → search, end to end through the API."""

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
