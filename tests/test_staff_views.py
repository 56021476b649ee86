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
