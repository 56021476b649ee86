"""The staff pages: for staff only."""

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

pytestmark = pytest.mark.django_db


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


def test_the_moderation_form_goes_back_only_to_a_page_of_this_site(client, staff):
    client.force_login(staff)
    act = reverse("gallery:moderation-act")
    for elsewhere in ("https://evil.example/", "//evil.example/x", "javascript:alert(1)"):
        answer = client.post(act, {"action": "hide", "ids": [], "next": elsewhere})
        assert answer.status_code == 302 and answer["Location"] == reverse("gallery:moderation")
    back = reverse("gallery:moderation") + "?show=reported"
    assert client.post(act, {"action": "hide", "ids": [], "next": back})["Location"] == back
