"""Search reads: a hash model's index is ranked by Hamming distance."""

import pytest

from gallery import selectors, services
from gallery.embedders import active_model, forget_active_model
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
