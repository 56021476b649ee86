"""Activation: re-embed, own index, atomic switch, and back; searches use one model for query and index throughout."""

import signal
import time

import numpy as np
import pytest
from PIL import Image as PILImage

from gallery import embedders, selectors, services
from gallery.embedders import active_model, default_model, forget_active_model, model_ref
from gallery.index import IndexMeta
from gallery.models import Embedding, Image, ModelVersion
from gallery.selectors.index_journal import index_current
from tests.helpers import train_small
from tests.images import encode, make_category_picture

pytestmark = pytest.mark.django_db


def test_activation_switches_search_to_the_new_model_and_back(gallery):
    default = services.model_version_default()
    learned = train_small()
    query = encode(make_category_picture("green", 999, (96, 96)), "PNG")
    before = selectors.image_search_by_image(query, k=5)

    services.model_activate_start(learned, dispatch_task=False)
    assert active_model().name == default.name  # still the old model while it is prepared
    assert selectors.image_search_by_image(query, k=5).hits

    learned = services.model_activate(learned.pk)
    assert learned.is_active and learned.activation == ModelVersion.Activation.ACTIVE
    forget_active_model()
    ref = active_model()
    assert ref.name == learned.name and ref.index_dir.parent.name == "models"
    assert Embedding.objects.filter(model_name=learned.name).count() == 18
    meta = IndexMeta.read(ref.index_dir)
    assert meta.model == learned.name and meta.count == 18
    after = selectors.image_search_by_image(query, k=5)
    assert [h.image.category for h in after.hits] == ["green"] * 5
    assert after.hits[0].score != pytest.approx(before.hits[0].score)  # another vector space
    # Copies are still found by the copy channel (hashes and the default model's vectors),
    # which the learned model does not replace: a small re-compressed copy of one item.
    target = gallery[7]
    with target.file.open("rb") as fh:
        copy = PILImage.open(fh).convert("RGB").resize((60, 60))
    found = selectors.image_search_by_image(encode(copy, "JPEG", quality=40), k=5).hits[0]
    assert found.image.pk == target.pk and found.match == "near_duplicate"

    default.refresh_from_db()
    assert not default.is_active
    services.model_activate_start(default, dispatch_task=False)
    services.model_activate(default.pk)
    forget_active_model()
    assert active_model().name == default.name
    assert len(index_current(default_model().index_dir)) == 18
    assert ModelVersion.objects.filter(is_active=True).count() == 1


def test_images_uploaded_during_activation_get_the_new_models_vector(
    gallery, django_capture_on_commit_callbacks
):
    learned = train_small()
    services.model_activate_start(learned, dispatch_task=False)
    late, _ = services.image_create(
        data=encode(make_category_picture("red", 555, (96, 96)), "PNG"), title="late", category="red"
    )
    services.images_embed([late.pk])  # with the model active at that time: the default
    services.index_sync()
    with django_capture_on_commit_callbacks(execute=True):
        services.model_activate(learned.pk)
    forget_active_model()
    late.refresh_from_db()
    if late.status != Image.Status.INDEXED:  # caught up after the switch (normally by the worker)
        services.images_embed([late.pk])
        services.index_sync()
    assert Embedding.objects.filter(image=late, model_name=learned.name).exists()
    assert late.pk in {h.image.pk for h in selectors.image_similar(gallery[0], k=30).hits}


def test_writers_do_not_act_on_a_model_switched_a_second_ago(gallery):
    """A worker whose cache still holds the old model, in the second after another process
    switched: a new upload gets the new model's vector and reaches the new model's index."""
    default = services.model_version_default()
    learned = train_small()
    services.model_activate_start(learned, dispatch_task=False)
    services.model_activate(learned.pk)
    embedders.remember_active_model(model_ref(default), at=time.monotonic())  # that worker's cache
    late, _ = services.image_create(
        data=encode(make_category_picture("red", 556, (96, 96)), "PNG"), title="late", category="red"
    )
    services.images_embed([late.pk])
    services.index_sync()
    late.refresh_from_db()
    assert late.status == Image.Status.INDEXED
    assert Embedding.objects.filter(image=late, model_name=learned.name).exists()
    # ...and the copy model's, which finds copies whichever model serves similarity
    assert Embedding.objects.filter(image=late, model_name=default.name).exists()
    assert len(index_current(model_ref(learned).index_dir)) == 19


def test_an_index_update_overtaken_by_a_switch_sends_its_images_to_the_new_model(gallery):
    """An upload that got only the old model's vector, and an index update still on the old
    model after the switch had caught up: the image goes back to processing and on to the new
    model's vector and index."""
    default = model_ref(services.model_version_default())
    learned = train_small()
    services.model_activate_start(learned, dispatch_task=False)
    services.model_activate(learned.pk)
    late, _ = services.image_create(
        data=encode(make_category_picture("red", 557, (96, 96)), "PNG"), title="late", category="red"
    )
    vector = np.full(default.dim, default.dim**-0.5, dtype=np.float32)
    Embedding.objects.create(image=late, model_name=default.name, dim=default.dim, vector=vector.tobytes())
    Image.objects.filter(pk=late.pk).update(pdq=bytes(32), pdq_quality=100)
    # the late update, into the old index only
    assert services.index_sync_models([default], None) == 1
    late.refresh_from_db()
    assert late.status == Image.Status.INDEXED

    services.images_catch_up_with_served_models()
    late.refresh_from_db()
    assert late.status == Image.Status.PROCESSING
    services.images_embed([late.pk])
    services.index_sync()
    late.refresh_from_db()
    assert late.status == Image.Status.INDEXED
    assert Embedding.objects.filter(image=late, model_name=learned.name).exists()
    assert len(index_current(model_ref(learned).index_dir)) == 19


def test_an_indexed_image_whose_file_is_gone_does_not_stall_the_switch(gallery):
    """Activation used to pick the same unreadable image again in every batch and never end.
    It now switches without it; the catch-up after the switch fails it with the reason."""
    learned = train_small()
    lost = gallery[0]
    lost.file.storage.delete(lost.file.name)

    def too_long(signum, frame):
        raise TimeoutError("activation did not end")

    previous = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(120)
    try:
        services.model_activate_start(learned, dispatch_task=False)
        learned = services.model_activate(learned.pk, batch_size=4)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert learned.is_active and learned.activation_progress["done"] == 17
    forget_active_model()
    services.images_catch_up_with_served_models()
    services.images_embed([lost.pk])
    lost.refresh_from_db()
    assert lost.status == Image.Status.FAILED and "cannot be read" in lost.error


def test_a_changed_default_embedder_re_embeds_the_gallery_when_a_worker_starts(gallery, settings):
    """Another recipe of gallery vectors (`EMBEDDER_GALLERY_VIEWS`) is another model: its index
    was built from the database's vectors of the new name only, and every earlier photo fell
    out of search for good. A starting embed worker now sends them back to be embedded."""
    from gallery import queues

    old = default_model().name
    settings.EMBEDDER_GALLERY_VIEWS = 1
    forget_active_model()
    new = default_model().name
    assert new != old
    services.worker_started({queues.EMBED})
    assert Image.objects.filter(status=Image.Status.PROCESSING).count() == 18

    services.images_embed([im.pk for im in gallery])
    services.index_sync()
    assert Image.objects.filter(status=Image.Status.INDEXED).count() == 18
    assert Embedding.objects.filter(model_name=new).count() == 18
    meta = IndexMeta.read(default_model().index_dir)
    assert meta.model == new and meta.count == 18
    copy = encode(PILImage.open(gallery[4].file.path), "PNG")
    hits = selectors.image_search_by_image(copy, k=18).hits
    assert hits[0].image.pk == gallery[4].pk and hits[0].match == "exact"
    assert {h.image.pk for h in hits} == {im.pk for im in gallery}
