"""Staff trains a model from the admin in a real headless Chromium, watches it finish, and
switches searches to it; the search page then answers with the new model."""

import re

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect

from gallery.models import ModelVersion
from tests.conftest import wait_for_status
from tests.e2e.test_admin_browser import log_in
from tests.e2e.test_browser import payload
from tests.helpers import upload_colour_gallery
from tests.images import encode, make_category_folder, make_category_picture

pytestmark = pytest.mark.browser


def test_staff_trains_a_model_and_activates_it(pipeline, page: Page, tmp_path, settings):
    settings.IMPORT_ROOT = tmp_path  # data named in the admin lies under the import root
    wait_for_status(upload_colour_gallery(3, seed=500))
    folder = make_category_folder(tmp_path / "training", per_class=10)
    User.objects.create_user("boss", password="secret-pw", is_staff=True, is_superuser=True)
    log_in(page, "boss", "secret-pw")

    page.goto("/admin/gallery/modelversion/add/")
    page.select_option("#id_kind", "metric")
    page.fill("#id_data", str(folder))
    page.fill("#id_epochs", "4")
    page.fill("#id_image_size", "64")
    page.click("#start-training")
    expect(page).to_have_url(re.compile(r"/admin/gallery/modelversion/\d+/change/$"))
    expect(page.locator("#model-state")).to_have_text("ready", timeout=180_000)
    expect(page.locator("#model-percent")).to_contain_text("100")
    expect(page.locator("#model-loss-chart")).to_be_visible(timeout=15_000)

    page.click("#activate-model")
    expect(page.locator("#activation-state")).to_have_text("active", timeout=180_000)
    version = ModelVersion.objects.get(is_active=True)
    assert version.kind == "metric" and version.activation_progress["done"] == 9
    page.screenshot(path="/tmp/admin-model.png", full_page=True)

    page.goto("/")
    page.set_input_files(
        "#file-input", files=[payload("q.png", encode(make_category_picture("red", 9, (96, 96)), "PNG"))]
    )
    results = page.locator("#results .result")
    expect(results).to_have_count(9, timeout=30_000)
