"""The JSON API contract: shapes, status codes, and a clear error for each bad input."""

import re

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from PIL import Image as PILImage

from gallery import services
from gallery.models import ApiToken, Image
from tests.helpers import api_upload
from tests.images import encode, make_image_bytes, make_picture, png_header_only

pytestmark = pytest.mark.django_db


def upload_file(data, name="photo.jpg"):
    return SimpleUploadedFile(name, data)


@pytest.fixture
def indexed(clean_index):
    """Five items indexed in-process (the worker path is covered by test_pipeline)."""
    images = [
        services.image_create(
            data=make_image_bytes(seed), title=f"item {seed}", category="odd" if seed % 2 else "even"
        )[0]
        for seed in range(5)
    ]
    services.images_embed([im.pk for im in images])
    services.index_sync()
    return images


def test_create_then_get_status(client):
    response = client.post(
        "/api/images", {"image": upload_file(make_image_bytes(1)), "title": "One", "category": "c"}
    )
    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "processing" and body["duplicate"] is False
    detail = client.get(f"/api/images/{body['id']}").json()
    assert detail["title"] == "One" and detail["category"] == "c" and detail["status"] == "processing"
    assert detail["error"] == ""
    assert detail["thumbnail_url"].startswith("http://testserver/media/thumbs/")
    assert detail["url"] == f"http://testserver/items/{body['id']}/"
    assert client.get(detail["thumbnail_url"]).status_code == 200


def test_identical_upload_returns_existing(client):
    first = client.post("/api/images", {"image": upload_file(make_image_bytes(2))}).json()
    second = client.post("/api/images", {"image": upload_file(make_image_bytes(2))})
    assert second.status_code == 200 and second.json()["id"] == first["id"] and second.json()["duplicate"]


BAD_INPUTS = {
    "not an image": (b"%PDF-1.4 hello", "not an image"),
    "unsupported format": (encode(make_picture(3), "PPM"), "Unsupported image format"),
    "truncated": (make_image_bytes(3, size=(640, 480))[:2000], "truncated or corrupt"),
    "decompression bomb": (png_header_only(40000, 40000), "too many pixels"),
    "a 1x70,000 strip": (encode(PILImage.new("RGB", (1, 70000), "red"), "PNG"), "too long"),
    "a 4x1,000 strip": (encode(PILImage.new("RGB", (1000, 4), "red"), "PNG"), "too narrow"),
}


@pytest.mark.parametrize("endpoint", ["/api/images", "/api/search"])
@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_bad_inputs_give_400_with_a_message_and_create_nothing(client, endpoint, kind):
    data, message = BAD_INPUTS[kind]
    response = client.post(endpoint, {"image": upload_file(data)})
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert Image.objects.count() == 0


def test_too_many_bytes(client, settings):
    settings.UPLOAD_MAX_BYTES = 1000
    response = client.post("/api/images", {"image": upload_file(make_image_bytes(4))})
    assert response.status_code == 400 and "too large" in response.json()["error"]


def test_missing_file(client):
    response = client.post("/api/search", {"k": "3"})
    assert response.status_code == 400 and "attach an image" in response.json()["error"]


def test_unknown_ids_give_404(client):
    assert client.get("/api/images/999999").status_code == 404
    assert "error" in client.get("/api/images/999999/similar").json()


def test_search_on_an_empty_gallery(client, clean_index):
    body = client.post("/api/search", {"image": upload_file(make_image_bytes(5))}).json()
    assert body["results"] == [] and body["took_ms"] >= 0


def test_search_shape_order_k_and_category(client, indexed):
    body = client.post("/api/search", {"image": upload_file(make_image_bytes(3)), "k": "3"}).json()
    results = body["results"]
    assert len(results) == 3
    assert results[0]["id"] == indexed[3].pk and results[0]["score"] > 0.95
    assert set(results[0]) >= {"id", "score", "title", "category", "url", "thumbnail_url"}
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    everything = client.post("/api/search", {"image": upload_file(make_image_bytes(3)), "k": "500"}).json()
    assert len(everything["results"]) == 5  # k clamped to what the gallery holds
    evens = client.post("/api/search", {"image": upload_file(make_image_bytes(3)), "category": "even"}).json()
    assert {r["category"] for r in evens["results"]} == {"even"} and len(evens["results"]) == 3


def test_similar_excludes_the_item_and_hidden_items(client, indexed):
    body = client.get(f"/api/images/{indexed[0].pk}/similar?k=10").json()
    ids = [r["id"] for r in body["results"]]
    assert indexed[0].pk not in ids and len(ids) == 4
    Image.objects.filter(pk=indexed[1].pk).update(status=Image.Status.HIDDEN)
    ids = [r["id"] for r in client.get(f"/api/images/{indexed[0].pk}/similar?k=10").json()["results"]]
    assert indexed[1].pk not in ids and len(ids) == 3
    assert client.get(f"/api/images/{indexed[1].pk}").json()["status"] == "hidden"


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
    ordinary_token = services.api_token_issue(User.objects.get(username="visitor"))[1]
    assert client.post(url, HTTP_AUTHORIZATION=f"Bearer {ordinary_token}").status_code == 403
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(staff)
    assert strict.post(url).status_code == 403  # a session without the CSRF token is refused
    assert Image.objects.get(pk=image_id).status != "hidden"
    assert client.post(url, HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 200


def test_status_of_unpublished_items_hides_their_content(client, staff, settings):
    settings.MODERATION = "pre"
    image_id = api_upload(client, 13, title="secret").json()["id"]
    body = client.get(f"/api/images/{image_id}").json()
    assert body == {"id": image_id, "status": "processing", "moderation": "pending", "error": ""}
    client.force_login(staff)
    assert client.get(f"/api/images/{image_id}").json()["title"] == "secret"


def test_the_openapi_document_declares_every_answer_errors_included(client):
    schema = client.get("/api/openapi.json").json()
    error = {"$ref": "#/components/schemas/ErrorOut"}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            answers = operation["responses"]
            ok = [code for code in answers if code.startswith("2")]
            failures = [code for code in answers if code.startswith("4")]
            assert ok and failures, f"{method} {path}"
            for code in ok:
                assert answers[code]["content"]["application/json"]["schema"], f"{method} {path} {code}"
            for code in failures:
                assert answers[code]["content"]["application/json"]["schema"] == error, (
                    f"{method} {path} {code}"
                )
    assert set(schema["components"]["schemas"]["SearchHitOut"]["properties"]) == {
        "id",
        "title",
        "category",
        "url",
        "image_url",
        "thumbnail_url",
        "score",
        "match",
        "explanation",
        "box",
    }


@pytest.mark.parametrize("path", ["/api/images", "/api/search", "/upload/"])
def test_a_huge_body_is_refused_before_it_is_sent(live_server, path):
    """413 from the declared length alone: the server answers after 64 KB of a 300 MB body."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(live_server.url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as conn:
        conn.sendall(
            (
                f"POST {path} HTTP/1.1\r\nHost: {url.hostname}\r\nContent-Length: {300 * 1024 * 1024}\r\n"
                "Content-Type: multipart/form-data; boundary=xyz\r\n\r\n"
            ).encode()
            + b"--xyz\r\n" * 8192
        )
        answer = ""
        while "limit is" not in answer:
            part = conn.recv(65536)
            if not part:
                break
            answer += part.decode(errors="replace")
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    assert "too large (300 MB); the limit is 21 MB" in answer


def test_visitors_are_rate_limited_with_retry_after_and_staff_are_not(client, settings, staff, indexed):
    from django.core.cache import cache

    cache.clear()
    settings.THROTTLE_RATES = {"search": "3/min", "url": "1/min", "upload": "2/min", "report": "2/hour"}
    query = {"image": upload_file(make_image_bytes(1))}
    answers = [client.post("/api/search", {"image": upload_file(make_image_bytes(1))}) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert "try again in" in answers[3].json()["error"] and 50 <= int(answers[3]["Retry-After"]) <= 60
    other = Client(REMOTE_ADDR="10.0.0.7")  # another address has its own count
    assert other.post("/api/search", query).status_code == 200
    uploads = [api_upload(other, seed).status_code for seed in (71, 72, 73)]
    assert uploads[:2] != [429, 429] and uploads[2] == 429
    item = Image.objects.searchable().first()
    reports = [other.post(f"/api/images/{item.pk}/report", {"reason": f"r{n}"}).status_code for n in range(3)]
    assert reports[2] == 429
    client.force_login(staff)
    assert all(
        client.post("/api/search", {"image": upload_file(make_image_bytes(1))}).status_code == 200
        for _ in range(5)
    )


def test_a_rate_limit_whose_cache_is_down_lets_requests_through(client, settings, indexed):
    settings.THROTTLE_RATES = {"search": "1/min", "url": None, "upload": None, "report": None}
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
        }
    }
    for _ in range(3):
        assert client.post("/api/search", {"image": upload_file(make_image_bytes(1))}).status_code == 200


def test_a_signed_in_upload_counts_as_theirs_only_with_the_csrf_token(staff, settings):
    """Another site cannot make a member of staff's browser upload an item approved at once."""
    settings.MODERATION = "pre"
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(staff)
    forged = browser.post("/api/images", {"image": upload_file(make_image_bytes(81))}).json()
    assert Image.objects.get(pk=forged["id"]).uploaded_by is None and forged["moderation"] == "pending"
    browser.get("/upload/")  # the page sets the token cookie its script sends back
    token = browser.cookies["csrftoken"].value
    own = browser.post(
        "/api/images", {"image": upload_file(make_image_bytes(82))}, HTTP_X_CSRFTOKEN=token
    ).json()
    assert Image.objects.get(pk=own["id"]).uploaded_by == staff and own["moderation"] == "approved"


def test_api_tokens_are_stored_hashed_and_shown_once(admin_client, staff, token):
    """Who can read the table or the admin cannot act as the token's user."""
    row = ApiToken.objects.get(user=staff)
    assert token not in (row.key_hash, row.prefix) and row.key_hash == ApiToken.digest(token)
    page = admin_client.get(f"/admin/gallery/apitoken/{row.pk}/change/").content.decode()
    assert token not in page and row.prefix in admin_client.get("/admin/gallery/apitoken/").content.decode()
    added = admin_client.post("/admin/gallery/apitoken/add/", {"user": staff.pk, "name": "ci"}, follow=True)
    key = re.search(r"key is ([0-9a-f]{48})", added.content.decode()).group(1)
    assert ApiToken.objects.filter(key_hash=ApiToken.digest(key), name="ci").exists()
    assert Client().get("/api/images/1", HTTP_AUTHORIZATION=f"Bearer {key}").status_code in (200, 404)
    assert key not in admin_client.get("/admin/gallery/apitoken/").content.decode()


def test_uploading_a_hidden_items_bytes_again_does_not_reveal_its_title(client, staff):
    first = api_upload(client, 91, title="taken down for a reason").json()
    Image.objects.filter(pk=first["id"]).update(status=Image.Status.HIDDEN)
    again = api_upload(Client(), 91, title="other").json()
    assert again["duplicate"] and again["id"] == first["id"] and again["title"] == ""
    client.force_login(staff)
    assert api_upload(client, 91).json()["title"] == "taken down for a reason"
