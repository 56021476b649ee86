"""The server-rendered pages, through Django's test client."""

import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from gallery import services
from gallery.models import Image
from tests.conftest import wait_for_status
from tests.images import make_image_bytes


def make_item(seed: int, *, category: str = "", status: str = Image.Status.INDEXED, title: str = "") -> Image:
    """A stored image in the given status, without the worker (no embedding, not in the index)."""
    image, created = services.image_create(
        data=make_image_bytes(seed), title=title or f"pic {seed}", category=category, enqueue=False
    )
    assert created
    Image.objects.filter(pk=image.pk).update(status=status)
    image.refresh_from_db()
    return image


def ids_in(html: str, container_id: str) -> list[int]:
    """The data-id of every card inside the element with this id (in page order)."""
    match = re.search(rf'id="{container_id}".*?</ul>', html, re.S)
    assert match, f"#{container_id} is not on the page"
    return [int(i) for i in re.findall(r'<li class="card[^"]*" data-id="(\d+)"', match.group(0))]


# --- home --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_home_empty_gallery_shows_hint(client):
    response = client.get(reverse("gallery:home"))
    assert response.status_code == 200
    html = response.content.decode()
    for element in (
        'id="dropzone"',
        'id="file-input"',
        'id="category-filter"',
        'id="results"',
        'id="search-error"',
    ):
        assert element in html
    assert 'id="empty-hint"' in html
    assert f'href="{reverse("gallery:upload")}"' in html
    assert 'data-search-url="/api/search"' in html
    assert 'data-max-upload-mb="20"' in html
    assert "gallery/app.js" in html and "gallery/app.css" in html


@pytest.mark.django_db
def test_home_lists_categories_of_indexed_items_only(client):
    make_item(1, category="shoes")
    make_item(2, category="hats")
    make_item(3, category="pending-only", status=Image.Status.PROCESSING)
    html = client.get(reverse("gallery:home")).content.decode()
    assert 'id="empty-hint"' not in html
    assert '<strong id="indexed-count">2</strong>' in html
    select = re.search(r'<select id="category-filter".*?</select>', html, re.S).group(0)
    assert re.findall(r'<option value="([^"]*)"', select) == ["", "hats", "shoes"]


@pytest.mark.django_db
def test_navigation_shows_admin_only_to_staff(client, admin_client):
    nav = re.compile(r'<nav class="site-nav".*?</nav>', re.S)
    public = nav.search(client.get("/").content.decode()).group(0)
    assert "Search" in public and "Browse" in public and "Upload" in public
    assert "/admin/" not in public
    staff = nav.search(admin_client.get("/").content.decode()).group(0)
    assert 'href="/admin/"' in staff
    assert 'href="/" aria-current="page"' in public


# --- upload ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_upload_page_has_form_and_category_suggestions(client):
    make_item(1, category="shoes")
    response = client.get(reverse("gallery:upload"))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="upload-form"' in html
    assert 'action="/api/images"' in html
    for element in ('id="dropzone"', 'id="file-input"', 'id="upload-title"', 'id="upload-category"'):
        assert element in html
    assert 'list="category-options"' in html
    assert '<option value="shoes">' in html
    assert 'id="upload-status"' in html and 'id="uploads"' in html
    assert 'for="upload-title"' in html and 'for="file-input"' in html


# --- browse ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_browse_paginates_indexed_items(client, settings):
    settings.BROWSE_PAGE_SIZE = 2
    items = [make_item(seed, category="odd" if seed % 2 else "even") for seed in range(5)]
    make_item(10, status=Image.Status.PROCESSING)
    make_item(11, status=Image.Status.FAILED)
    make_item(12, status=Image.Status.HIDDEN)
    newest_first = [i.pk for i in reversed(items)]

    first = client.get(reverse("gallery:browse"))
    assert first.status_code == 200
    html = first.content.decode()
    assert "5 indexed images" in html
    assert ids_in(html, "browse-grid") == newest_first[:2]
    assert "Page 1 of 3" in html
    assert 'rel="next" href="?page=2"' in html
    assert 'rel="prev"' not in html

    seen = []
    for number in (1, 2, 3):
        seen += ids_in(
            client.get(reverse("gallery:browse"), {"page": number}).content.decode(), "browse-grid"
        )
    assert seen == newest_first

    last = client.get(reverse("gallery:browse"), {"page": 3}).content.decode()
    assert 'rel="prev" href="?page=2"' in last
    assert 'rel="next"' not in last
    # Out-of-range and junk page numbers fall back to a real page instead of failing.
    assert client.get(reverse("gallery:browse"), {"page": 99}).status_code == 200
    assert client.get(reverse("gallery:browse"), {"page": "x"}).status_code == 200


@pytest.mark.django_db
def test_browse_filters_by_category(client, settings):
    settings.BROWSE_PAGE_SIZE = 2
    odd = [make_item(seed, category="odd" if seed % 2 else "even") for seed in range(6)][1::2]
    response = client.get(reverse("gallery:browse"), {"category": "odd"})
    assert response.status_code == 200
    html = response.content.decode()
    assert "3 indexed images in “odd”" in html
    assert ids_in(html, "browse-grid") == [odd[2].pk, odd[1].pk]
    # Pagination keeps the filter; the filter chips mark the current one.
    assert 'rel="next" href="?category=odd&amp;page=2"' in html
    assert re.search(r'<a class="chip" href="/browse/\?category=odd" aria-current="true">odd</a>', html)
    page2 = client.get(reverse("gallery:browse"), {"category": "odd", "page": 2}).content.decode()
    assert ids_in(page2, "browse-grid") == [odd[0].pk]
    # Each card links to its item page and shows its thumbnail.
    assert f'href="{odd[0].get_absolute_url()}"' in page2
    assert odd[0].thumbnail.url in page2


@pytest.mark.django_db
def test_browse_empty_category_says_so(client):
    make_item(1, category="odd")
    html = client.get(reverse("gallery:browse"), {"category": "nothing-here"}).content.decode()
    assert 'id="browse-empty"' in html
    assert 'id="browse-grid"' not in html


# --- item --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_item_page_unknown_id_is_404(client):
    assert client.get(reverse("gallery:item", args=[987654])).status_code == 404


@pytest.mark.django_db
def test_item_page_shows_metadata(client):
    image = make_item(7, category="shoes", title="Red shoe")
    response = client.get(image.get_absolute_url())
    assert response.status_code == 200
    html = response.content.decode()
    assert '<h1 id="item-title">Red shoe</h1>' in html
    assert f'src="{image.file.url}"' in html
    assert 'alt="Red shoe"' in html
    assert "240 × 180 px" in html
    assert "?category=shoes" in html
    assert 'id="item-status" class="status status-indexed">Indexed<' in html
    assert image.created_at.strftime("%Y") in html
    assert f'href="/?item={image.pk}"' in html


@pytest.mark.django_db
def test_item_page_processing_and_failed(client):
    processing = make_item(1, status=Image.Status.PROCESSING)
    html = client.get(processing.get_absolute_url()).content.decode()
    assert "status-processing" in html
    assert 'id="similar"' not in html and "Similar images" not in html

    failed = make_item(2, status=Image.Status.FAILED)
    Image.objects.filter(pk=failed.pk).update(error="The stored file cannot be read.")
    html = client.get(failed.get_absolute_url()).content.decode()
    assert "status-failed" in html
    assert "The stored file cannot be read." in html


@pytest.mark.django_db
def test_hidden_item_is_404_except_for_staff(client, admin_client):
    hidden = make_item(1, status=Image.Status.HIDDEN)
    assert client.get(hidden.get_absolute_url()).status_code == 404
    response = admin_client.get(hidden.get_absolute_url())
    assert response.status_code == 200
    assert "hidden from search" in response.content.decode()


def test_item_page_shows_similar_items(pipeline):
    client = Client()
    ids = []
    for seed in range(4):
        upload = SimpleUploadedFile(f"p{seed}.jpg", make_image_bytes(seed))
        response = client.post("/api/images", {"image": upload, "title": f"pic {seed}", "category": "set"})
        assert response.status_code == 201, response.content
        ids.append(response.json()["id"])
    wait_for_status(ids)

    response = client.get(reverse("gallery:item", args=[ids[0]]))
    assert response.status_code == 200
    hits = response.context["similar"].hits
    assert sorted(hit.image.pk for hit in hits) == sorted(ids[1:])  # never itself
    scores = [hit.score for hit in hits]
    assert scores == sorted(scores, reverse=True)

    html = response.content.decode()
    assert ids_in(html, "similar") == [hit.image.pk for hit in hits]
    for hit in hits:
        assert f'href="{hit.image.get_absolute_url()}"' in html
        assert hit.image.thumbnail.url in html
    assert re.findall(r'<span class="score"[^>]*>(-?\d+)%</span>', html) == [
        str(round(hit.score * 100)) for hit in hits
    ]
    assert "3 results" in html


def test_media_of_items_that_are_not_public_is_not_served_to_the_public(client, staff, settings):
    from gallery import services

    shown, _ = services.image_create(data=make_image_bytes(150))
    gone, _ = services.image_create(data=make_image_bytes(151))
    Image.objects.filter(pk=gone.pk).update(status=Image.Status.HIDDEN)
    settings.MODERATION = "pre"
    waiting, _ = services.image_create(data=make_image_bytes(152))
    assert waiting.moderation == Image.Moderation.PENDING
    assert gone.sha256[:16] not in gone.file.name  # names cannot be derived from the bytes
    for field in ("file", "thumbnail"):
        answer = client.get(getattr(shown, field).url)
        assert answer.status_code == 200 and answer["Cache-Control"] == "public, max-age=300"
        assert b"".join(answer.streaming_content) == getattr(shown, field).read()
        for hidden in (gone, waiting):
            assert client.get(getattr(hidden, field).url).status_code == 404
    assert client.get("/media/images/nothing-here.jpg").status_code == 404
    client.force_login(staff)
    answer = client.get(gone.file.url)
    assert answer.status_code == 200 and answer["Cache-Control"] == "private, no-store"
    settings.MEDIA_ACCEL_REDIRECT = "/protected-media/"
    answer = client.get(gone.thumbnail.url)
    assert answer["X-Accel-Redirect"] == "/protected-media/" + gone.thumbnail.name and not answer.content
