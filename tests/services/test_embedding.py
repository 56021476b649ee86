"""Embedding stored images: unreadable files and repeated failures end with the reason recorded."""

import pytest
from django.core.files.storage import default_storage

from gallery import services
from gallery.models import Image
from tests.images import make_image_bytes

pytestmark = pytest.mark.django_db


def test_unreadable_stored_file_fails_with_reason_and_no_server_path(client, settings):
    image, _ = services.image_create(data=make_image_bytes(40))
    default_storage.delete(image.file.name)
    services.images_embed([image.pk])
    image.refresh_from_db()
    assert image.status == Image.Status.FAILED and "cannot be read" in image.error
    shown = client.get(f"/api/images/{image.pk}").json()["error"]
    assert shown == "The stored file cannot be read (FileNotFoundError)"
    for text in (shown, client.get(f"/items/{image.pk}/").content.decode()):
        assert str(settings.MEDIA_ROOT) not in text and "No such file" not in text


def test_gives_up_after_max_attempts(settings):
    image, _ = services.image_create(data=make_image_bytes(41))
    Image.objects.filter(pk=image.pk).update(
        embed_attempts=settings.EMBED_MAX_ATTEMPTS, error="Embedding failed: boom"
    )
    services.images_embed([image.pk])
    image.refresh_from_db()
    assert image.status == Image.Status.FAILED
    assert (
        image.error.startswith(f"Gave up after {settings.EMBED_MAX_ATTEMPTS} attempts")
        and "boom" in image.error
    )
