"""Embedding stored images: unreadable files and repeated failures end with the reason recorded."""

import zipfile

import numpy as np
import pytest
from django.core.cache import cache
from django.core.files.storage import default_storage

from gallery import services
from gallery.models import Image
from gallery.services.embedding import EMBEDDING_BUSY_KEY, embedding_mark_busy
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


def test_a_batch_holds_reduced_decodes_not_full_size_photos(settings):
    """A 12-megapixel transparent PNG (kept as PNG) is embedded from at most 4x the
    embedder's input, and still gets its vector and hash."""
    from PIL import Image as PILImage

    from gallery.services.embedding import _open_for_embedding
    from tests.images import encode

    big = PILImage.new("RGBA", (4000, 3000), (200, 30, 30, 128))
    image, _ = services.image_create(data=encode(big, "PNG"))
    picture = _open_for_embedding(image)
    assert (
        max(picture.size) <= 4 * settings.EMBEDDER_IMAGE_SIZE and picture.size[0] / picture.size[1] == 4 / 3
    )
    services.images_embed([image.pk])
    image.refresh_from_db()
    assert image.status != Image.Status.FAILED and image.pdq is not None and image.embeddings.exists()


def test_the_backfill_looks_at_a_window_of_ids_per_run_and_covers_the_gallery(clean_index, monkeypatch):
    """Looking for images that lack something among a million took 1.4-4 s every minute:
    each run looks at a window of ids, stays on it until it is done, and consecutive runs
    cover every id."""
    from gallery.selectors.catalogue import IdWindows
    from gallery.services import embedding
    from tests.helpers import embed_and_index

    monkeypatch.setattr(embedding, "_backfill_windows", IdWindows(3))
    ids = [services.image_create(data=make_image_bytes(seed))[0].pk for seed in range(50, 57)]
    embed_and_index(*ids)
    Image.objects.filter(pk__in=ids).update(pdq=None)  # a gallery from before the copy channel
    assert Image.objects.filter(pk__in=ids, status=Image.Status.INDEXED).count() == 7

    def hashed() -> int:
        return Image.objects.filter(pk__in=ids, pdq__isnull=False).count()

    services.images_backfill(seconds=0)  # out of time before the first batch: the window waits
    filled = [hashed()]
    for _ in range(4):
        services.images_backfill()
        filled.append(hashed())
    assert filled == [0, 3, 6, 7, 7]


def test_an_embedded_photo_keeps_its_local_features_and_verification_reads_them():
    """After embedding, each detector's features of the photo are kept in a file (`services.item_features`);
    verification then reads them instead of computing them: they are the features computed
    from the photo, and are found even once the photo itself cannot be read."""
    from gallery.retrieval.features_file import stored_name
    from gallery.retrieval.verify import Detector, item_features
    from gallery.selectors.search_checks import _item_features, stored_photo
    from tests.conftest import dataset

    with zipfile.ZipFile(dataset("fashion-products-6k.zip")) as zf:
        first = sorted(n for n in zf.namelist() if n.endswith(".jpg"))[0]
        image, _ = services.image_create(data=zf.read(first))
    services.images_embed([image.pk])
    cache.delete(EMBEDDING_BUSY_KEY)  # (the embedding just done: the features would wait a moment)
    assert services.item_features_store([image.pk]) == 2  # (queued after embedding: run here)
    name = image.file.name
    photo = stored_photo(name)
    assert photo is not None
    for detector in Detector:
        assert default_storage.exists(stored_name(name, detector))
        _item_features.cache_clear()
        kept = _item_features(image.pk, name, detector)
        computed = item_features(photo, detector)
        assert kept is not None and len(kept) > 20
        assert np.array_equal(kept.points, computed.points)
        assert np.array_equal(kept.descriptors, computed.descriptors)
    default_storage.delete(name)
    _item_features.cache_clear()
    assert stored_photo(name) is None and _item_features(image.pk, name, Detector.ORB) is not None
    assert services.item_features_store([image.pk]) == 0  # kept already: nothing computed again


def test_keeping_features_gives_way_to_embedding_work_that_comes_in_or_runs(
    redis_url, django_capture_on_commit_callbacks
):
    """Features wait on nothing: when an upload's embedding is queued meanwhile, the rest go
    back to their queue after the photo at hand (a batch took 1-1.5 s); while another
    process embeds, they wait a moment (even at nice 19 they slowed it)."""
    import redis

    from gallery import queues
    from gallery.services import dispatch

    broker = redis.Redis.from_url(redis_url)
    ids = [services.image_create(data=make_image_bytes(seed))[0].pk for seed in (60, 61, 62)]
    broker.delete(queues.EMBED, queues.EMBED_LATER)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            dispatch.images_embed([ids[0]])
        assert broker.llen(queues.EMBED) == 1
        with django_capture_on_commit_callbacks(execute=True):
            assert services.item_features_store(ids) == 2  # the first photo's two files only
        assert broker.llen(queues.EMBED_LATER) == 1  # the other two, queued again
        broker.delete(queues.EMBED, queues.EMBED_LATER)
        embedding_mark_busy()  # another process embeds: nothing now, all of them a moment later
        with django_capture_on_commit_callbacks(execute=True):
            assert services.item_features_store(ids) == 0
        assert broker.llen(queues.EMBED_LATER) == 1
        cache.delete(EMBEDDING_BUSY_KEY)
        assert services.item_features_store(ids) == 4
    finally:
        broker.delete(*queues.ALL)


def test_no_features_are_queued_when_the_settings_keep_none(
    redis_url, settings, django_capture_on_commit_callbacks
):
    import redis

    from gallery import queues

    broker = redis.Redis.from_url(redis_url)
    image, _ = services.image_create(data=make_image_bytes(63))
    broker.delete(queues.EMBED_LATER)
    try:
        settings.ITEM_FEATURES_KEPT = False
        with django_capture_on_commit_callbacks(execute=True):
            services.images_embed([image.pk])
        assert broker.llen(queues.EMBED_LATER) == 0
        settings.ITEM_FEATURES_KEPT = True
        Image.objects.filter(pk=image.pk).update(status=Image.Status.PROCESSING)
        image.embeddings.all().delete()
        with django_capture_on_commit_callbacks(execute=True):
            services.images_embed([image.pk])
        assert broker.llen(queues.EMBED_LATER) == 1
    finally:
        broker.delete(*queues.ALL)  # (the index updates too: no later worker takes them)


def test_features_are_computed_in_a_thread_of_their_own_at_the_lowest_priority():
    """Work none waits on gives the cores to uploads and imports: a thread at nice 19 that
    ends with it (the worker process keeps its priority), its errors raised to the caller."""
    import os
    import threading

    from gallery.services.item_features import LOWEST_PRIORITY, at_lowest_priority

    def own_priority() -> tuple[int, int]:
        tid = threading.get_native_id()
        return os.getpriority(os.PRIO_PROCESS, tid), tid

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    priority, tid = at_lowest_priority(own_priority)
    assert priority == LOWEST_PRIORITY != before and tid != threading.get_native_id()
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before

    def broken() -> None:
        raise ValueError("a photo that breaks the detector")

    with pytest.raises(ValueError, match="breaks the detector"):
        at_lowest_priority(broken)
