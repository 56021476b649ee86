"""Match tiers and region search on the home page, in a real headless Chromium against the
live server, the real Celery worker and the real search pipeline."""

import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from PIL import Image as PILImage
from playwright.sync_api import Page, Request, expect

from tests.conftest import wait_for_status
from tests.images import encode, make_picture

pytestmark = pytest.mark.browser

SEEDS = (11, 12, 13, 14)  # four clearly different scenes
ITEM_SIZE = (240, 180)
CANVAS = (640, 300)  # the query: two items side by side on a plain white canvas
LEFT_AT, RIGHT_AT = (40, 60), (360, 60)
LEFT_SEED, RIGHT_SEED = 12, 13


def item_bytes(seed: int) -> bytes:
    return encode(make_picture(seed, ITEM_SIZE), "JPEG", quality=90)


def side_by_side() -> bytes:
    canvas = PILImage.new("RGB", CANVAS, "white")
    canvas.paste(make_picture(LEFT_SEED, ITEM_SIZE), LEFT_AT)
    canvas.paste(make_picture(RIGHT_SEED, ITEM_SIZE), RIGHT_AT)
    return encode(canvas, "JPEG", quality=90)


def payload(name: str, data: bytes, mime: str = "image/jpeg") -> dict:
    return {"name": name, "mimeType": mime, "buffer": data}


def index_items() -> dict[int, int]:
    client = Client()
    ids = {}
    for seed in SEEDS:
        upload = SimpleUploadedFile(f"scene{seed}.jpg", item_bytes(seed))
        response = client.post("/api/images", {"image": upload, "title": f"scene {seed}"})
        assert response.status_code == 201, response.content
        ids[seed] = response.json()["id"]
    wait_for_status(list(ids.values()))
    return ids


# Chromium does not hand multipart bodies with file parts to Playwright: the page records the
# fields of each search it sends instead.
RECORD_SEARCHES = """
(() => {
  const original = window.fetch;
  window.searches = [];
  window.fetch = function (resource, options) {
    if (String(resource).endsWith("/api/search") && options && options.body instanceof FormData) {
      const form = options.body;
      window.searches.push({ box: form.get("box"), url: form.get("url"), image: form.has("image") });
    }
    return original.apply(this, arguments);
  };
})();
"""


def is_search(request: Request) -> bool:
    return request.method == "POST" and request.url.endswith("/api/search")


def sent(page: Page) -> dict:
    """The fields of the last search the page sent: box, url (None when absent) and image."""
    return page.evaluate("window.searches.at(-1)")


def box_of(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def to_page(page: Page, x: float, y: float) -> tuple[float, float]:
    """A point in pixels of the query picture, in page coordinates (the photo is scaled to fit)."""
    return tuple(
        page.evaluate(
            """([x, y]) => {
                const img = document.querySelector("#query-preview");
                const r = document.querySelector("#crop-stage").getBoundingClientRect();
                return [r.left + (x * r.width) / img.naturalWidth, r.top + (y * r.height) / img.naturalHeight];
            }""",
            [x, y],
        )
    )


def drag(page: Page, start: tuple[float, float], end: tuple[float, float]) -> None:
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move((start[0] + end[0]) / 2, (start[1] + end[1]) / 2, steps=4)
    page.mouse.move(*end, steps=4)
    page.mouse.up()


def touch_drag(page: Page, start: tuple[float, float], end: tuple[float, float]) -> None:
    cdp = page.context.new_cdp_session(page)
    try:
        steps = [
            (start[0] + (end[0] - start[0]) * i / 8, start[1] + (end[1] - start[1]) * i / 8) for i in range(9)
        ]
        for kind, (x, y) in [("touchStart", steps[0])] + [("touchMove", step) for step in steps[1:]]:
            cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [{"x": x, "y": y}]})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    finally:
        cdp.detach()


def center(page: Page, selector: str) -> tuple[float, float]:
    box = page.locator(selector).bounding_box()
    assert box, selector
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def assert_close(sent: list[int], wanted: list[int], slack: int = 4) -> None:
    assert all(abs(a - b) <= slack for a, b in zip(sent, wanted)), (sent, wanted)


def test_tier_badges_and_region_search(pipeline, page: Page):
    ids = index_items()
    page.add_init_script(RECORD_SEARCHES)
    page.goto("/")
    results = page.locator("#results .result")
    first = results.first

    # The exact file of a gallery photo: the first card says so, in words on the card.
    page.set_input_files("#file-input", files=[payload("scene11.jpg", item_bytes(11))])
    expect(first).to_have_attribute("data-id", str(ids[11]))
    expect(first).to_have_attribute("data-match", "exact")
    expect(first.locator(".badge")).to_have_text("Same photo")
    expect(first.locator(".explanation")).to_be_visible()
    expect(first.locator(".explanation")).to_have_text(re.compile(r"^[A-Z]\w+"))
    expect(page.locator("#results-heading")).to_have_text("Matches")
    expect(results.nth(1)).to_have_attribute("data-match", "similar")
    expect(results.nth(1).locator(".badge")).to_have_count(0)
    page.screenshot(path="/tmp/ui-badges.png", full_page=True)

    # Two gallery items side by side: the photo is shown with the suggested regions over it.
    with page.expect_request(is_search):
        page.set_input_files("#file-input", files=[payload("two.jpg", side_by_side())])
    assert sent(page)["box"] is None
    expect(page.locator("#query-name")).to_have_text("two.jpg")
    regions = page.locator("#query-regions .region")
    expect(regions.first).to_be_visible()
    expect(page.locator("#search-loading")).to_be_hidden()
    expect(first).to_have_attribute("data-id", re.compile(rf"^({ids[LEFT_SEED]}|{ids[RIGHT_SEED]})$"))
    expect(page.locator("#crop-status")).to_have_text("Whole photo")
    expect(page.locator("#crop-clear")).to_be_disabled()
    stage = page.locator("#crop-stage").bounding_box()
    for region in regions.all():  # drawn over the photo, scaled to its displayed size
        shown = region.bounding_box()
        assert shown["x"] >= stage["x"] - 1 and shown["y"] >= stage["y"] - 1
        assert shown["x"] + shown["width"] <= stage["x"] + stage["width"] + 1
        assert shown["y"] + shown["height"] <= stage["y"] + stage["height"] + 1

    # The crop box's bottom-right handle, dragged with the mouse to just past the left item:
    # released, it searches that part at once, in pixels of the uploaded picture.
    with page.expect_request(is_search):
        drag(page, center(page, '.crop-handle[data-corner="se"]'), to_page(page, 300, 260))
    assert_close(box_of(sent(page)["box"]), [0, 0, 300, 260])
    expect(first).to_have_attribute("data-id", str(ids[LEFT_SEED]))
    expect(page.locator("#crop-status")).to_have_text(re.compile(r"^Selected area: \d+ × \d+ px$"))
    expect(page.locator("#crop-clear")).to_be_enabled()

    # The box itself, moved over the right-hand item: the first result becomes that item.
    with page.expect_request(is_search):
        drag(page, to_page(page, 150, 130), to_page(page, 470, 130))
    assert_close(box_of(sent(page)["box"]), [320, 0, 300, 260])
    expect(first).to_have_attribute("data-id", str(ids[RIGHT_SEED]))
    expect(first.locator(".card-title")).to_have_text(f"scene {RIGHT_SEED}")
    expect(page.locator("#crop-box")).to_have_attribute("data-box", sent(page)["box"])

    # "Search whole photo" clears the box and searches again.
    with page.expect_request(is_search):
        page.click("#crop-clear")
    assert sent(page)["box"] is None
    expect(page.locator("#crop-box")).to_have_attribute("data-box", "")
    expect(page.locator("#crop-status")).to_have_text("Whole photo")

    # A click on a suggested region moves the crop box there and searches it.
    expect(page.locator("#search-loading")).to_be_hidden()
    page.wait_for_function(
        "() => [...document.querySelectorAll('#results img')].every((i) => i.complete && i.naturalWidth > 0)"
    )
    page.screenshot(path="/tmp/ui-search.png", full_page=True)
    region = regions.last  # drawn on top of the others
    wanted = region.get_attribute("data-box")
    with page.expect_request(is_search):
        region.click()
    assert sent(page)["box"] == wanted
    expect(page.locator("#crop-box")).to_have_attribute("data-box", wanted)
    expect(page.locator(f'#query-regions .region[data-box="{wanted}"]')).to_have_attribute(
        "aria-pressed", "true"
    )
    expect(page.locator("#search-loading")).to_be_hidden()
    expect(first).to_be_visible()

    # Keyboard: the crop box is focusable, Shift+arrows resize it, Enter searches.
    page.focus("#crop-box")
    page.keyboard.press("Shift+ArrowLeft")
    resized = page.locator("#crop-box").get_attribute("data-box")
    assert box_of(resized)[2] < box_of(wanted)[2] and box_of(resized)[:2] == box_of(wanted)[:2]
    with page.expect_request(is_search):
        page.keyboard.press("Enter")
    assert sent(page)["box"] == resized
    expect(page.locator("#search-loading")).to_be_hidden()
    with page.expect_request(is_search):  # Escape: the whole photo again
        page.keyboard.press("Escape")
    assert sent(page)["box"] is None
    expect(page.locator("#search-loading")).to_be_hidden()

    # A finger: drawing a box over the left item (touch pointer events) searches it.
    with page.expect_request(is_search):
        touch_drag(page, to_page(page, 30, 50), to_page(page, 290, 250))
    assert_close(box_of(sent(page)["box"]), [30, 50, 260, 200])
    expect(first).to_have_attribute("data-id", str(ids[LEFT_SEED]))
    expect(page.locator("#search-loading")).to_be_hidden()

    # On a phone-sized screen: nothing sticks out sideways, the photo and its boxes fit.
    page.set_viewport_size({"width": 375, "height": 800})
    expect(page.locator("#crop-stage")).to_be_visible()
    page.wait_for_function("document.documentElement.scrollWidth <= 375")  # refitted on resize
    stage = page.locator("#crop-stage").bounding_box()
    assert stage["x"] >= 0 and stage["x"] + stage["width"] <= 375
    page.screenshot(path="/tmp/ui-region-phone.png", full_page=True)


def test_take_a_photo_and_search_by_address(pipeline, page: Page):
    ids = index_items()
    page.add_init_script(RECORD_SEARCHES)
    page.goto("/")
    error = page.locator("#search-error")

    # "Take a photo" opens the camera picker (a file input that asks phones for the camera).
    camera = page.locator("#camera-input")
    expect(camera).to_have_attribute("capture", "environment")
    expect(camera).to_have_attribute("accept", "image/*")
    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Take a photo").click()
    chooser.value.set_files(files=[payload("camera.jpg", item_bytes(14))])
    expect(page.locator("#results .result").first).to_have_attribute("data-id", str(ids[14]))

    # An address: checked in the page first, then sent as `url` (no file); the API's words shown.
    address = page.get_by_label("Image address")
    address.fill("not an address")
    page.get_by_role("button", name="Search by image address").click()
    expect(error).to_contain_text("starts with http:// or https://")
    address.fill("http://127.0.0.1:9/nothing-here.jpg")
    with page.expect_request(is_search):
        page.get_by_role("button", name="Search by image address").click()
    assert sent(page)["url"] == "http://127.0.0.1:9/nothing-here.jpg"
    assert sent(page)["image"] is False
    expect(error).to_be_visible()
    expect(error).not_to_be_empty()
    expect(page.locator("#results-section")).to_be_hidden()
    expect(page.locator("#preview-missing")).to_be_visible()  # the browser cannot show it either
