"""The pages in a real headless Chromium, against the live server, the real Celery worker
and the real embedder."""

import base64
import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from playwright.sync_api import Page, expect

from gallery.models import Image
from tests.conftest import wait_for_status
from tests.images import encode, make_image_bytes, make_picture

pytestmark = pytest.mark.browser

NOT_AN_IMAGE = b"this is plain text, not a picture\n" * 20


def api_upload(client: Client, seed: int, **fields) -> int:
    upload = SimpleUploadedFile(f"p{seed}.jpg", make_image_bytes(seed))
    response = client.post("/api/images", {"image": upload, **fields})
    assert response.status_code == 201, response.content
    return response.json()["id"]


def payload(name: str, data: bytes, mime: str = "image/jpeg") -> dict:
    return {"name": name, "mimeType": mime, "buffer": data}


def deliver(page: Page, how: str, data: bytes, name: str, mime: str = "image/jpeg") -> None:
    """Paste (Ctrl-V) or drop a file the way the browser delivers one: a DataTransfer event."""
    page.evaluate(
        """([how, b64, name, mime]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: mime }));
            if (how === "paste") {
                document.dispatchEvent(new ClipboardEvent("paste", { clipboardData: transfer, bubbles: true }));
                return;
            }
            const zone = document.querySelector("#dropzone");
            for (const type of ["dragenter", "dragover", "drop"]) {
                zone.dispatchEvent(new DragEvent(type, { dataTransfer: transfer, bubbles: true, cancelable: true }));
            }
        }""",
        [how, base64.b64encode(data).decode(), name, mime],
    )


def query_copy(seed: int) -> bytes:
    """A resized, re-encoded copy of picture `seed`: not the uploaded bytes, the same picture."""
    return encode(make_picture(seed).resize((480, 360)), "JPEG", quality=60)


def test_search_by_image_shows_the_matching_item_first(pipeline, page: Page):
    client = Client()
    ids = [
        api_upload(client, seed, title=f"pic {seed}", category="odd" if seed % 2 else "even")
        for seed in range(6)
    ]
    wait_for_status(ids)

    page.goto("/")
    expect(page.locator("#empty-hint")).to_have_count(0)
    expect(page.locator("#results-section")).to_be_hidden()

    page.set_input_files("#file-input", files=[payload("query.jpg", query_copy(3))])
    results = page.locator("#results .result")
    expect(results.first).to_have_attribute("data-id", str(ids[3]))
    expect(results).to_have_count(6)
    expect(page.locator("#search-meta")).to_have_text(re.compile(r"^6 results · took \d+ ms$"))
    expect(page.locator("#search-loading")).to_be_hidden()
    expect(page.locator("#query-preview")).to_be_visible()
    expect(page.locator("#query-name")).to_have_text("query.jpg")

    best = results.first
    expect(best.locator(".card-title")).to_have_text("pic 3")
    expect(best.locator(".card-title")).to_have_attribute("href", re.compile(rf"/items/{ids[3]}/$"))
    expect(best.locator(".tag")).to_have_text("odd")
    expect(best.locator(".score")).to_have_text(re.compile(r"^\d{1,3}%$"))
    expect(best.locator("img")).to_have_attribute("alt", "pic 3")
    scores = [float(s) for s in results.evaluate_all("cards => cards.map((c) => c.dataset.score)")]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] > scores[1]
    page.wait_for_function(
        "() => [...document.querySelectorAll('#results img')].every((i) => i.complete && i.naturalWidth > 0)"
    )
    page.screenshot(path="/tmp/home.png", full_page=True)

    # Changing the category re-runs the same query within that category.
    page.select_option("#category-filter", "even")
    expect(results).to_have_count(3)
    expect(page.locator("#results .result .tag")).to_have_text(["even"] * 3)
    expect(page.locator("#search-meta")).to_contain_text("3 results")
    page.select_option("#category-filter", "")
    expect(results).to_have_count(6)
    expect(results.first).to_have_attribute("data-id", str(ids[3]))

    # "Search with this image" on a result fetches its image and searches with it.
    target = results.nth(3)
    target_id = target.get_attribute("data-id")
    target_title = target.locator(".card-title").inner_text()
    target.locator(".search-this").click()
    expect(results.first).to_have_attribute("data-id", target_id)
    expect(page.locator("#query-name")).to_have_text(target_title)

    # Pasting (Ctrl-V) and dropping a picture search with it too.
    deliver(page, "paste", query_copy(1), "image.png")
    expect(results.first).to_have_attribute("data-id", str(ids[1]))
    deliver(page, "drop", query_copy(4), "dropped.jpg")
    expect(results.first).to_have_attribute("data-id", str(ids[4]))
    expect(page.locator("#query-name")).to_have_text("dropped.jpg")

    # The item page lists similar items and can start a search with its own image.
    page.goto(f"/items/{ids[5]}/")
    expect(page.locator("#item-title")).to_have_text("pic 5")
    expect(page.locator("#item-status")).to_have_text("Indexed")
    expect(page.locator("#similar .result")).to_have_count(5)
    page.click("#search-with-this")
    expect(page).to_have_url(re.compile(rf"/\?item={ids[5]}$"))
    expect(results.first).to_have_attribute("data-id", str(ids[5]))


def test_upload_page_follows_status_without_reloading(pipeline, page: Page):
    page.goto("/upload/")
    # Survives only if the page is never reloaded; records every status the card shows.
    page.evaluate(
        """() => {
            window.samePage = true;
            window.seen = [];
            new MutationObserver(() => {
                const badge = document.querySelector("#uploads .upload-item .status");
                if (badge && window.seen.at(-1) !== badge.textContent) window.seen.push(badge.textContent);
            }).observe(document.querySelector("#uploads"), { subtree: true, childList: true, characterData: true });
        }"""
    )
    sunset = make_image_bytes(21)
    page.set_input_files("#file-input", files=[payload("sunset.jpg", sunset)])
    expect(page.locator("#selection")).to_contain_text("sunset.jpg")
    page.fill("#upload-title", "Sunset")
    page.fill("#upload-category", "sky")
    page.click("#upload-submit")

    cards = page.locator("#uploads .upload-item")
    card = cards.first
    expect(card.locator(".status")).to_have_text("indexed", timeout=90_000)
    expect(card).to_have_attribute("data-status", "indexed")
    expect(page.locator("#upload-status")).to_contain_text("“Sunset” is indexed")
    expect(card.locator("a.upload-title")).to_have_text("Sunset")
    item_id = int(card.get_attribute("data-id"))
    expect(card.locator("a.upload-title")).to_have_attribute("href", re.compile(rf"/items/{item_id}/$"))
    seen = page.evaluate("window.seen")
    assert seen[0] == "uploading" and "processing" in seen and seen[-1] == "indexed", seen
    assert page.evaluate("window.samePage") is True
    stored = Image.objects.get(pk=item_id)
    assert (stored.title, stored.category, stored.status) == ("Sunset", "sky", "indexed")
    expect(page.locator("#upload-title")).to_have_value("")  # ready for the next one
    expect(page.locator("#upload-category")).to_have_value("sky")

    # Several in a row: two more files in one go, each followed separately.
    page.set_input_files(
        "#file-input",
        files=[
            payload("beach.png", make_image_bytes(22, "PNG"), "image/png"),
            payload("hill.jpg", make_image_bytes(23)),
        ],
    )
    page.click("#upload-submit")
    expect(cards).to_have_count(3)
    expect(page.locator("#uploads .upload-item .status")).to_have_text(["indexed"] * 3, timeout=90_000)
    expect(page.locator("#uploads .upload-title")).to_have_text(["hill", "beach", "Sunset"])

    # The same file again: it is already in the gallery, with a link to it.
    page.set_input_files("#file-input", files=[payload("sunset-again.jpg", sunset)])
    page.click("#upload-submit")
    expect(cards).to_have_count(4)
    duplicate = cards.first
    expect(duplicate.locator(".upload-duplicate")).to_contain_text("Already in the gallery")
    expect(duplicate.locator(".upload-duplicate a")).to_have_attribute("href", f"/items/{item_id}/")
    expect(duplicate.locator(".status")).to_have_text("indexed")
    expect(page.locator("#upload-status")).to_contain_text("already in the gallery")
    assert Image.objects.count() == 3

    # A file that only pretends to be an image: the API's words are shown.
    page.set_input_files("#file-input", files=[payload("broken.jpg", NOT_AN_IMAGE)])
    page.click("#upload-submit")
    expect(page.locator("#upload-error")).to_contain_text("not an image we can read")
    expect(cards.first.locator(".status")).to_have_text("rejected")
    assert Image.objects.count() == 3
    assert page.evaluate("window.samePage") is True


def test_upload_page_says_when_an_item_waits_for_a_moderator(pipeline, page: Page, settings):
    settings.MODERATION = "pre"
    page.goto("/upload/")
    page.set_input_files("#file-input", files=[payload("moon.jpg", make_image_bytes(31))])
    page.click("#upload-submit")
    card = page.locator("#uploads .upload-item").first
    expect(card.locator(".status")).to_have_text("indexed", timeout=90_000)
    expect(card).to_have_attribute("data-moderation", "pending")
    expect(card.locator(".upload-note")).to_contain_text("A moderator will review it")
    expect(page.locator("#upload-status")).to_contain_text("“moon” is indexed and waits for a moderator")
    expect(card.locator(".upload-links")).to_be_hidden()  # its page is not public yet
    expect(card.locator("a.upload-title")).to_have_count(0)
    assert Image.objects.get(pk=int(card.get_attribute("data-id"))).moderation == "pending"


def test_bad_files_on_home_page_show_an_error(page: Page):
    # Playwright turns on file-chooser interception lazily, when the first listener is added;
    # if the key press wins that race the chooser opens natively and no event arrives. A
    # listener added before the page loads keeps interception on from the start.
    page.on("filechooser", lambda chooser: None)
    page.goto("/")
    expect(page.locator("#empty-hint")).to_be_visible()
    expect(page.locator("#empty-hint a")).to_have_attribute("href", "/upload/")
    error = page.locator("#search-error")
    expect(error).to_be_hidden()

    # Keyboard: the drop zone opens the file picker with Enter (and Space).
    page.focus("#dropzone")
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    chooser.value.set_files(files=[payload("broken.jpg", NOT_AN_IMAGE)])
    # Checked by the server: its message is shown as it is.
    expect(error).to_be_visible()
    expect(error).to_contain_text("This file is not an image we can read")
    expect(page.locator("#results-section")).to_be_hidden()

    # Checked before uploading: the type and the size.
    with page.expect_file_chooser() as chooser:
        page.keyboard.press(" ")
    chooser.value.set_files(files=[payload("notes.txt", b"hello", "text/plain")])
    expect(error).to_contain_text("“notes.txt” is not a supported image (text/plain)")
    page.set_input_files("#file-input", files=[payload("huge.jpg", b"\xff\xd8" + bytes(21 * 1024 * 1024))])
    expect(error).to_contain_text("“huge.jpg” is too large (21.0 MB); the limit is 20 MB.")
    expect(page.locator("#results-section")).to_be_hidden()
