"""Staff reads: near-duplicate groups."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from gallery import selectors, services
from tests.helpers import api_upload, embed_and_index
from tests.images import encode, make_picture

pytestmark = pytest.mark.django_db


def test_near_duplicates_are_grouped_and_flagged(client, staff, clean_index):
    original = api_upload(client, 9).json()["id"]
    embed_and_index(original)
    copy = encode(make_picture(9).resize((360, 270)), "JPEG", quality=50)
    copy_id = client.post("/api/images", {"image": SimpleUploadedFile("copy.jpg", copy)}).json()["id"]
    other = api_upload(client, 10).json()["id"]
    embed_and_index(copy_id, other)
    assert client.get(f"/api/images/{copy_id}").json()["near_duplicate_of"] == original
    assert client.get(f"/api/images/{other}").json()["near_duplicate_of"] is None
    groups = selectors.near_duplicate_groups()
    assert [[im.pk for im in group.images] for group in groups] == [[original, copy_id]]
    client.force_login(staff)
    assert (
        'id="no-duplicates"' not in client.get(reverse("gallery:duplicates")).content.decode()
    )  # no scan yet
    services.duplicate_scan_run(services.duplicate_scan_start(user=staff).pk)  # the task, in-process
    page = client.get(reverse("gallery:duplicates")).content.decode()
    assert page.count('class="panel dup-group"') == 1
