"""The upload service and the index writer, run in-process on the real embedder."""

import numpy as np
import pytest
from django.core.files.storage import default_storage

from gallery import selectors, services
from gallery.embedders import get_embedder
from gallery.imaging import ImageRejected
from gallery.index import IndexMeta, VectorIndex
from gallery.models import Embedding, Image
from tests.images import encode, make_image_bytes, make_picture

pytestmark = pytest.mark.django_db


def media_files(settings):
    return sorted(p for p in settings.MEDIA_ROOT.rglob("*") if p.is_file())


def index_now(*images):
    services.images_embed([im.pk for im in images])
    services.index_sync()


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


def test_embed_and_sync_make_images_searchable(clean_index):
    images = [services.image_create(data=make_image_bytes(seed), title=f"t{seed}")[0] for seed in range(4)]
    assert services.images_embed([im.pk for im in images]) == 4
    assert services.images_embed([im.pk for im in images]) == 0  # idempotent
    assert Embedding.objects.count() == 4
    assert services.index_sync() == 4
    assert services.index_sync() == 0
    assert set(Image.objects.values_list("status", flat=True)) == {"indexed"}
    meta = IndexMeta.read(clean_index)
    assert meta.count == 4 and meta.model == get_embedder().name
    result = selectors.image_search_by_image(make_image_bytes(2), k=2)
    assert [hit.image.pk for hit in result.hits][0] == images[2].pk
    assert result.hits[0].score > 0.95  # gallery vectors also cover a centre crop


def test_hidden_items_are_not_added_and_removed_ones_stay_out(clean_index):
    a, _ = services.image_create(data=make_image_bytes(10))
    b, _ = services.image_create(data=make_image_bytes(11))
    services.images_embed([a.pk, b.pk])
    Image.objects.filter(pk=a.pk).update(status=Image.Status.HIDDEN)  # hidden before its index update
    services.index_sync()
    index = VectorIndex.load(clean_index)
    assert index.labels() == {b.pk}
    Image.objects.filter(pk=b.pk).update(status=Image.Status.HIDDEN)
    assert services.index_remove([b.pk]) == 1
    assert len(VectorIndex.load(clean_index)) == 0
    services.index_sync()  # a stale update never brings them back
    assert len(VectorIndex.load(clean_index)) == 0


def test_rebuild_restores_a_lost_index(clean_index):
    images = [services.image_create(data=make_image_bytes(seed))[0] for seed in range(20, 23)]
    index_now(*images)
    for path in clean_index.glob("*.*"):
        path.unlink()
    assert services.index_rebuild() == 3
    index = VectorIndex.load(clean_index)
    assert index.labels() == {im.pk for im in images}
    vec = Embedding.objects.get(image=images[0]).as_array()
    assert index.query(vec, 1)[0][0] == images[0].pk
    assert np.isclose(np.linalg.norm(vec), 1.0, atol=1e-5)


def test_sync_without_index_on_disk_rebuilds(clean_index):
    images = [services.image_create(data=make_image_bytes(seed))[0] for seed in range(30, 32)]
    services.images_embed([im.pk for im in images])
    assert services.index_sync() == 2
    assert VectorIndex.load(clean_index).labels() == {im.pk for im in images}


def test_unreadable_stored_file_fails_with_reason():
    image, _ = services.image_create(data=make_image_bytes(40))
    default_storage.delete(image.file.name)
    services.images_embed([image.pk])
    image.refresh_from_db()
    assert image.status == Image.Status.FAILED and "cannot be read" in image.error


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
