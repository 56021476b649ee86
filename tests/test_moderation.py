"""Moderation: pre/post, staff actions (pages and API), reports, the log, near-duplicates,
permissions and CSRF."""

import re
import time

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from gallery import selectors, services
from gallery.index import VectorIndex
from gallery.models import ApiToken, Image, ModerationAction, Report
from tests.images import encode, make_image_bytes, make_picture

pytestmark = pytest.mark.django_db


def api_upload(client, seed, **fields):
    return client.post(
        "/api/images", {"image": SimpleUploadedFile(f"{seed}.jpg", make_image_bytes(seed)), **fields}
    )


def search_ids(client, seed):
    body = client.post("/api/search", {"image": SimpleUploadedFile("q.jpg", make_image_bytes(seed))}).json()
    return [r["id"] for r in body["results"]]


def process(*ids):
    """What the workers do, in-process (the worker path is covered in test_tasks/test_pipeline)."""
    services.images_embed(list(ids))
    services.index_sync()


@pytest.fixture
def staff(db):
    return User.objects.create_user("mod", password="pw", is_staff=True)


@pytest.fixture
def token(staff):
    return ApiToken.objects.create(user=staff, name="script").key


def test_pre_moderation_waits_for_approval(client, settings, staff, token, clean_index):
    settings.MODERATION = "pre"
    body = api_upload(client, 1).json()
    assert body["moderation"] == "pending"
    process(body["id"])
    assert body["id"] not in search_ids(client, 1)
    assert body["id"] not in VectorIndex.load(clean_index).labels()
    assert client.get(f"/items/{body['id']}/").status_code == 404  # not public yet
    response = client.post(f"/api/images/{body['id']}/approve", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.json() == {"id": body["id"], "status": "indexed", "moderation": "approved"}
    services.index_sync([body["id"]])  # what the queued index update does
    assert search_ids(client, 1)[0] == body["id"]
    # staff uploads skip the queue
    staff_client = Client()
    staff_client.force_login(staff)
    assert api_upload(staff_client, 2).json()["moderation"] == "approved"


def test_post_moderation_hide_is_immediate_and_unhide_restores(client, token, clean_index):
    ids = [api_upload(client, seed).json()["id"] for seed in (3, 4)]
    process(*ids)
    assert search_ids(client, 3)[0] == ids[0]
    client.post(f"/api/images/{ids[0]}/hide", {"reason": "spam"}, HTTP_AUTHORIZATION=f"Bearer {token}")
    assert ids[0] not in search_ids(client, 3)  # before the index is even updated
    services.index_remove([ids[0]])
    assert ids[0] not in VectorIndex.load(clean_index).labels()
    services.index_sync()  # nothing brings it back
    assert ids[0] not in VectorIndex.load(clean_index).labels()
    client.post(f"/api/images/{ids[0]}/unhide", HTTP_AUTHORIZATION=f"Bearer {token}")
    process(ids[0])
    assert search_ids(client, 3)[0] == ids[0]
    log = list(
        ModerationAction.objects.filter(image_id=ids[0]).values_list("action", "reason", "actor__username")
    )
    assert log == [("unhide", "", "mod"), ("hide", "spam", "mod")]


def test_reject_takes_an_item_out(client, token, clean_index):
    image_id = api_upload(client, 5).json()["id"]
    process(image_id)
    body = client.post(f"/api/images/{image_id}/reject", HTTP_AUTHORIZATION=f"Bearer {token}").json()
    assert body == {"id": image_id, "status": "hidden", "moderation": "rejected"}
    assert image_id not in search_ids(client, 5)


def test_api_permissions(client, staff, token):
    image_id = api_upload(client, 6).json()["id"]
    url = f"/api/images/{image_id}/hide"
    assert client.post(url).status_code == 401
    assert client.post(url, HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    User.objects.create_user("visitor", password="pw")
    visitor = Client()
    visitor.login(username="visitor", password="pw")
    response = visitor.post(url)
    assert response.status_code == 403 and "Only staff" in response.json()["error"]
    ordinary_token = ApiToken.objects.create(user=User.objects.get(username="visitor")).key
    assert client.post(url, HTTP_AUTHORIZATION=f"Bearer {ordinary_token}").status_code == 403
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(staff)
    assert strict.post(url).status_code == 403  # a session without the CSRF token is refused
    assert Image.objects.get(pk=image_id).status != "hidden"
    assert client.post(url, HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 200


def test_staff_pages_are_for_staff_only(client, staff):
    pages = [reverse("gallery:moderation"), reverse("gallery:moderation-log"), reverse("gallery:duplicates")]
    for url in pages:
        assert client.get(url).status_code == 302
    User.objects.create_user("visitor", password="pw")
    client.login(username="visitor", password="pw")
    for url in pages:
        assert client.get(url).status_code == 302
    client.force_login(staff)
    for url in pages:
        assert client.get(url).status_code == 200


def test_reports_land_in_the_queue_and_bulk_actions_resolve_them(staff, clean_index):
    visitor = Client(enforce_csrf_checks=True)
    ids = [api_upload(visitor, seed).json()["id"] for seed in (7, 8)]
    process(*ids)
    page = visitor.get(f"/items/{ids[0]}/").content.decode()
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    visitor.post(
        reverse("gallery:report", args=[ids[0]]), {"reason": "offensive", "csrfmiddlewaretoken": csrf}
    )
    assert visitor.post(f"/api/images/{ids[1]}/report", {"reason": ""}).status_code == 400
    assert Report.objects.filter(image_id=ids[0], resolved_at__isnull=True).count() == 1
    moderator = Client(enforce_csrf_checks=True)
    moderator.force_login(staff)
    queue = moderator.get(reverse("gallery:moderation") + "?show=reported").content.decode()
    assert "offensive" in queue and f'data-id="{ids[0]}"' in queue and f'data-id="{ids[1]}"' not in queue
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', queue).group(1)
    act = reverse("gallery:moderation-act")
    assert moderator.post(act, {"action": "hide", "ids": ids}).status_code == 403  # CSRF-protected
    moderator.post(act, {"action": "hide", "ids": ids, "reason": "bulk", "csrfmiddlewaretoken": csrf})
    assert set(Image.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"hidden"}
    assert not Report.objects.filter(resolved_at__isnull=True).exists()
    assert ModerationAction.objects.filter(action="hide", reason="bulk", actor=staff).count() == 2
    log = moderator.get(reverse("gallery:moderation-log")).content.decode()
    assert "bulk" in log and "offensive" in log


def test_near_duplicates_are_grouped_and_flagged(client, staff, clean_index):
    original = api_upload(client, 9).json()["id"]
    process(original)
    copy = encode(make_picture(9).resize((360, 270)), "JPEG", quality=50)
    copy_id = client.post("/api/images", {"image": SimpleUploadedFile("copy.jpg", copy)}).json()["id"]
    other = api_upload(client, 10).json()["id"]
    process(copy_id, other)
    assert client.get(f"/api/images/{copy_id}").json()["near_duplicate_of"] == original
    assert client.get(f"/api/images/{other}").json()["near_duplicate_of"] is None
    groups = selectors.near_duplicate_groups(0.95)
    assert [[im.pk for im in group] for group in groups] == [[original, copy_id]]
    client.force_login(staff)
    page = client.get(reverse("gallery:duplicates")).content.decode()
    assert page.count('class="panel dup-group"') == 1


def test_hidden_item_leaves_search_within_a_second_on_the_real_worker(pipeline, token):
    client = Client()
    ids = [api_upload(client, seed).json()["id"] for seed in (11, 12)]
    from tests.conftest import wait_for_status

    wait_for_status(ids)
    started = time.monotonic()
    client.post(f"/api/images/{ids[0]}/hide", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert ids[0] not in search_ids(client, 11)
    assert time.monotonic() - started < 1.0
    assert client.get(f"/api/images/{ids[1]}/similar").json()["results"] == []


def test_status_of_unpublished_items_hides_their_content(client, staff, settings):
    settings.MODERATION = "pre"
    image_id = api_upload(client, 13, title="secret").json()["id"]
    body = client.get(f"/api/images/{image_id}").json()
    assert body == {"id": image_id, "status": "processing", "moderation": "pending", "error": ""}
    client.force_login(staff)
    assert client.get(f"/api/images/{image_id}").json()["title"] == "secret"
