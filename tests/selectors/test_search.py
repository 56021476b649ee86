"""Search reads: a hash model's index is ranked by Hamming distance."""

import pytest

from gallery import selectors, services
from gallery.embedders import active_model, default_model, forget_active_model
from tests.helpers import train_small
from tests.images import encode, make_category_picture

pytestmark = pytest.mark.django_db


def test_hash_model_search_ranks_by_hamming_distance(gallery):
    hashed = train_small(bits=16)
    services.model_activate_start(hashed, dispatch_task=False)
    services.model_activate(hashed.pk)
    forget_active_model()
    assert active_model().bits == 16
    hits = selectors.image_search_by_image(
        encode(make_category_picture("blue", 4242, (96, 96)), "PNG"), k=4
    ).hits
    assert [h.image.category for h in hits] == ["blue"] * 4
    assert all(-1 <= h.score <= 1 for h in hits)


@pytest.mark.parametrize("path", ["small: exact scan", "large: over-fetch and check", "between: set filter"])
def test_category_search_gives_the_exact_nearest_members_on_every_path(clean_index, monkeypatch, path):
    """Whichever way a category is searched (by its size), the answer is its members nearest
    to the query, as an exact scan of their vectors says; items of other categories never."""
    import numpy as np

    from gallery.models import Embedding
    from gallery.selectors import search
    from tests.helpers import embed_and_index
    from tests.images import make_image_bytes

    images = [
        services.image_create(data=make_image_bytes(seed), category="big" if seed % 4 else "small")[0]
        for seed in range(200, 224)
    ]
    embed_and_index(*(im.pk for im in images))
    if path.startswith("large"):
        monkeypatch.setattr(search, "SMALL_CATEGORY", 3)
        monkeypatch.setattr(search, "LARGE_CATEGORY_SHARE", 0.5)  # "big" is 3/4 of the index
    elif path.startswith("between"):
        monkeypatch.setattr(search, "SMALL_CATEGORY", 3)
        monkeypatch.setattr(search, "LARGE_CATEGORY_SHARE", 0.9)
    query = Embedding.objects.get(image=images[5], model_name=default_model().name).as_array()
    for category in ("big", "small"):
        members = [im for im in images if im.category == category]
        truth = sorted(
            members,
            key=lambda im: (
                -float(Embedding.objects.get(image=im, model_name=default_model().name).as_array() @ query)
            ),
        )
        hits = selectors.search_vector(query, 4, category=category)
        assert [h.image.pk for h in hits] == [im.pk for im in truth[:4]]
        assert all(h.image.category == category for h in hits)
        assert np.isclose(
            hits[0].score,
            float(Embedding.objects.get(image=truth[0], model_name=default_model().name).as_array() @ query),
            atol=1e-4,
        )
