"""The index's single writer, run in-process on the real embedder: adds, removes, rebuilds."""

import numpy as np
import pytest

from gallery import selectors, services
from gallery.embedders import get_embedder
from gallery.index import IndexMeta, VectorIndex
from gallery.models import Embedding, Image
from tests.helpers import embed_and_index
from tests.images import make_image_bytes

pytestmark = pytest.mark.django_db


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
    assert result.hits[0].image.pk == images[2].pk
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
    embed_and_index(*(im.pk for im in images))
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
