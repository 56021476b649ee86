"""Staff flows in a real headless Chromium: a bulk ZIP import from the admin with its live
progress bar, then a moderator hides an item and it is gone from the results."""

import re

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect

from gallery.models import Image
from tests.e2e.test_browser import payload
from tests.images import encode, make_picture
from tests.test_admin_imports import make_zip

pytestmark = pytest.mark.browser


def query_copy(seed: int) -> bytes:
    """An enlarged, re-encoded copy of the zip's picture `seed`."""
    return encode(make_picture(seed, (96, 72)).resize((480, 360)), "JPEG", quality=70)


def log_in(page: Page, username: str, password: str) -> None:
    page.goto("/admin/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    expect(page).to_have_url(re.compile(r"/admin/$"))


def test_staff_imports_a_zip_and_a_moderator_hides_an_item(pipeline, page: Page, settings, tmp_path):
    settings.IMPORT_UPLOAD_DIR = tmp_path / "uploads"
    User.objects.create_user("boss", password="secret-pw", is_staff=True, is_superuser=True)
    log_in(page, "boss", "secret-pw")

    page.goto("/admin/gallery/importjob/add/")
    page.select_option("#id_source_kind", "zip")
    archive = make_zip(8).getvalue()
    page.set_input_files("#id_archive", files=[payload("catalogue.zip", archive, "application/zip")])
    page.click("#start-import")
    expect(page.locator("#import-bar")).to_be_visible()
    expect(page.locator("#import-percent")).to_have_text("100%", timeout=120_000)
    expect(page.locator("#import-searchable")).to_have_text("8", timeout=120_000)
    expect(page.locator("#import-state")).to_have_text("done")
    expect(page.locator("#import-imported")).to_have_text("8")
    page.screenshot(path="/tmp/admin-import.png", full_page=True)

    # The imported images are found by search (a re-encoded copy of item-3 as the query).
    item = Image.objects.get(title="item-3")
    page.goto("/")
    page.set_input_files("#file-input", files=[payload("query.jpg", query_copy(1003))])
    results = page.locator("#results .result")
    expect(results.first).to_have_attribute("data-id", str(item.pk))

    # A moderator hides it from its page; the same search no longer shows it.
    page.goto(f"/items/{item.pk}/")
    page.fill("#item-moderation input[name=reason]", "wrong item")
    page.click("#item-hide")
    expect(page.locator(".messages")).to_contain_text("Hide: 1 item")
    page.goto("/")
    page.set_input_files("#file-input", files=[payload("query.jpg", query_copy(1003))])
    expect(results.first).not_to_have_attribute("data-id", str(item.pk))
    assert str(item.pk) not in results.evaluate_all("cards => cards.map((c) => c.dataset.id)")
