"""Moderation: pre/post, staff actions, reports and the log; hidden items leave search at once."""

import re
import time

import pytest
from django.test import Client
from django.urls import reverse

from gallery import services
from gallery.models import Image, ModerationAction, Report
from gallery.selectors.index_journal import index_current
from tests.conftest import wait_for_status
from tests.helpers import api_upload, embed_and_index, search_ids
from tests.images import make_image_bytes

pytestmark = pytest.mark.django_db


def test_pre_moderation_waits_for_approval(client, settings, staff, token, clean_index):
    settings.MODERATION = "pre"
    body = api_upload(client, 1).json()
    assert body["moderation"] == "pending"
    embed_and_index(body["id"])
    assert body["id"] not in search_ids(client, 1)
    assert body["id"] not in index_current(clean_index).labels()
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
    embed_and_index(*ids)
    assert search_ids(client, 3)[0] == ids[0]
    client.post(f"/api/images/{ids[0]}/hide", {"reason": "spam"}, HTTP_AUTHORIZATION=f"Bearer {token}")
    assert ids[0] not in search_ids(client, 3)  # before the index is even updated
    services.index_remove([ids[0]])
    assert ids[0] not in index_current(clean_index).labels()
    services.index_sync()  # nothing brings it back
    assert ids[0] not in index_current(clean_index).labels()
    client.post(f"/api/images/{ids[0]}/unhide", HTTP_AUTHORIZATION=f"Bearer {token}")
    embed_and_index(ids[0])
    assert search_ids(client, 3)[0] == ids[0]
    log = list(
        ModerationAction.objects.filter(image_id=ids[0]).values_list("action", "reason", "actor__username")
    )
    assert log == [("unhide", "", "mod"), ("hide", "spam", "mod")]


def test_reject_takes_an_item_out(client, token, clean_index):
    image_id = api_upload(client, 5).json()["id"]
    embed_and_index(image_id)
    body = client.post(f"/api/images/{image_id}/reject", HTTP_AUTHORIZATION=f"Bearer {token}").json()
    assert body == {"id": image_id, "status": "hidden", "moderation": "rejected"}
    assert image_id not in search_ids(client, 5)


def test_reports_land_in_the_queue_and_bulk_actions_resolve_them(staff, clean_index):
    visitor = Client(enforce_csrf_checks=True)
    ids = [api_upload(visitor, seed).json()["id"] for seed in (7, 8)]
    embed_and_index(*ids)
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


def test_hidden_item_leaves_search_within_a_second_on_the_real_worker(pipeline, token):
    client = Client()
    ids = [api_upload(client, seed).json()["id"] for seed in (11, 12)]

    wait_for_status(ids)
    assert ids[0] in search_ids(client, 11)  # the embedder loaded: the second is what is timed
    started = time.monotonic()
    client.post(f"/api/images/{ids[0]}/hide", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert ids[0] not in search_ids(client, 11)
    assert time.monotonic() - started < 1.0
    assert client.get(f"/api/images/{ids[1]}/similar").json()["results"] == []


def test_one_open_report_per_visitor_and_item(client, staff):
    image, _ = services.image_create(data=make_image_bytes(140))
    Image.objects.filter(pk=image.pk).update(status=Image.Status.INDEXED)
    url = f"/api/images/{image.pk}/report"
    assert client.post(url, {"reason": "spam"}).status_code == 201
    again = client.post(url, {"reason": "still spam"})
    assert again.status_code == 400 and "already reported" in again.json()["error"]
    assert Client(REMOTE_ADDR="10.1.2.3").post(url, {"reason": "offensive"}).status_code == 201
    assert Report.objects.filter(image=image, resolved_at__isnull=True).count() == 2
    assert all("10.1.2.3" not in r.reporter for r in Report.objects.all())  # addresses are not kept
    services.images_moderate([image.pk], "approve", actor=staff)  # resolves the open reports
    assert client.post(url, {"reason": "back again"}).status_code == 201


def test_behind_a_proxy_each_forwarded_visitor_gets_their_own_report(settings):
    """Every visitor behind the proxy shares REMOTE_ADDR: the forwarded address tells them apart."""
    settings.NINJA_NUM_PROXIES = 1
    from ninja.conf import settings as ninja_settings

    ninja_settings.NUM_PROXIES = 1
    try:
        image, _ = services.image_create(data=make_image_bytes(141))
        Image.objects.filter(pk=image.pk).update(status=Image.Status.INDEXED)
        url = f"/api/images/{image.pk}/report"
        for visitor in ("203.0.113.5", "203.0.113.6"):
            proxied = Client(REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR=visitor)
            assert proxied.post(url, {"reason": "spam"}).status_code == 201
        assert Report.objects.filter(image=image).count() == 2
    finally:
        ninja_settings.NUM_PROXIES = 0
