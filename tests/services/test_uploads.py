"""The one upload path: storing, re-encoding, de-duplicating, refusing bad input."""

import pytest
from django.core.files.storage import default_storage

from gallery import services
from gallery.imaging import ImageRejected
from gallery.models import Image
from tests.helpers import media_files
from tests.images import encode, make_image_bytes, make_picture

pytestmark = pytest.mark.django_db


def test_create_stores_reencoded_copy_thumbnail_and_metadata(settings, django_capture_on_commit_callbacks):
    data = make_image_bytes(1, "PNG")
    with django_capture_on_commit_callbacks() as callbacks:
        image, created = services.image_create(
            data=data, title="  Red  shoe ", category="shoes", original_name="x/red.png"
        )
    assert created and len(callbacks) == 1  # embedding queued only after commit
    assert image.status == Image.Status.PROCESSING
    assert (image.title, image.category, image.original_format) == ("Red shoe", "shoes", "PNG")
    assert (image.width, image.height, image.byte_size) == (240, 180, len(data))
    assert default_storage.exists(image.file.name) and default_storage.exists(image.thumbnail.name)
    assert image.file.name.endswith(".jpg")  # re-encoded


def test_title_defaults_to_file_stem():
    image, _ = services.image_create(data=make_image_bytes(2), original_name="folder/blue-bag.jpg")
    assert image.title == "blue-bag"


def test_identical_bytes_return_the_existing_item(settings):
    data = make_image_bytes(3)
    first, created = services.image_create(data=data, title="a")
    files = media_files(settings)
    again, created_again = services.image_create(data=data, title="b")
    assert created and not created_again and again.pk == first.pk
    assert Image.objects.count() == 1 and media_files(settings) == files


@pytest.mark.parametrize(
    "data",
    [b"not an image", make_image_bytes(4)[:300], encode(make_picture(4), "PPM"), b""],
    ids=["text", "truncated", "unsupported", "empty"],
)
def test_bad_input_leaves_nothing(settings, data):
    before = media_files(settings)
    with pytest.raises(ImageRejected):
        services.image_create(data=data)
    assert Image.objects.count() == 0 and media_files(settings) == before


def test_limits_come_from_settings(settings):
    settings.UPLOAD_MAX_PIXELS = 100 * 100
    with pytest.raises(ImageRejected, match="too many pixels"):
        services.image_create(data=make_image_bytes(5))
    settings.UPLOAD_MAX_BYTES = 100
    with pytest.raises(ImageRejected, match="too large"):
        services.image_create(data=make_image_bytes(5))
