"""Search by address (`POST /api/search url=`): a real HTTP server on 127.0.0.1 in a thread,
the real fetch (no mocks), and the refusals an untrusted address needs (SSRF)."""

import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from gallery.services.remote_images import (
    MAX_REDIRECTS,
    PRIVATE_NETWORK,
    QueryUrlRefused,
    address_allowed,
    address_kind,
    image_fetch_from_url,
)
from tests.images import encode, make_category_picture, make_image_bytes

pytestmark = pytest.mark.django_db

QUERY = encode(make_category_picture("red", 100, (96, 96)), "PNG")  # the `gallery` fixture's first
JPEG = make_image_bytes(11)
BIG = b"\xff" * 50_000


class Handler(BaseHTTPRequestHandler):
    """The test site: every path is one case."""

    def log_message(self, format, *args):  # quiet
        pass

    def do_GET(self):
        self.server.paths.append(self.path)
        name, _, arg = self.path.split("?")[0].strip("/").partition("/")
        getattr(self, "page_" + name.replace(".", "_").replace("-", "_"), self.page_missing)(arg)

    def page_missing(self, arg):
        self._send(404, b"nothing here", "text/plain")

    def page_query_png(self, arg):
        self._send(200, QUERY, "image/png")

    def page_x_jpg(self, arg):
        self._send(200, JPEG, "image/jpeg")

    def page_text(self, arg):
        self._send(200, b"%PDF-1.4 hello", "application/pdf")

    def page_hops(self, arg):
        """/hops/<n>: n redirects (relative addresses), then the JPEG."""
        left = int(arg)
        self._redirect(302 if left % 2 else 307, f"/hops/{left - 1}" if left > 0 else "/x.jpg")

    def page_to(self, arg):
        """A redirect to an address that is refused even with private networks allowed."""
        target = {
            "metadata": "http://169.254.169.254/latest/meta-data",
            "ftp": "ftp://example.com/a.jpg",
            "zero": f"http://0.0.0.0:{self.server.server_port}/x.jpg",
        }[arg]
        self._redirect(301, target)

    def page_big(self, arg):
        self._send(200, BIG, "image/jpeg")

    def page_big_unsized(self, arg):
        """HTTP/1.0 without Content-Length: the body ends when the connection closes."""
        self._start(200, "image/jpeg")
        for _ in range(50):
            self.wfile.write(b"\xff" * 1000)

    def page_huge_claim(self, arg):
        """Claims 30 MB, sends 100 bytes and keeps the connection open for a while."""
        self.send_response(200)
        self.send_header("Content-Length", str(30 * 1024 * 1024))
        self.end_headers()
        self.wfile.write(b"\xff" * 100)
        time.sleep(3)

    def page_slow(self, arg):
        time.sleep(3)
        self._send(200, JPEG, "image/jpeg")

    def page_trickle(self, arg):
        """Answers at once, then one byte of body every 0.2 s for 6 s."""
        self._start(200, "image/jpeg")
        for byte in JPEG[:30]:
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
            time.sleep(0.2)

    def page_drip_headers(self, arg):
        """Headers one byte every 0.2 s: each read is quick, the whole is not."""
        self.wfile.write(b"HTTP/1.0 200 OK\r\n")
        for byte in b"X-Padding: " + b"a" * 30 + b"\r\n\r\n":
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
            time.sleep(0.2)

    def _start(self, status, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.end_headers()

    def _send(self, status, body, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, status, location):
        self.send_response(status)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request, client_address):
        """A client that gave up (the fetch's time budget) is expected here."""


@pytest.fixture(scope="module")
def site():
    server = Server(("127.0.0.1", 0), Handler)
    server.paths = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def base(site):
    site.paths.clear()
    return f"http://127.0.0.1:{site.server_port}"


@pytest.fixture
def allow_private(settings):
    settings.QUERY_URL_ALLOW_PRIVATE = True


def search_url(client, url, **fields):
    return client.post("/api/search", {"url": url, **fields})


def error_of(response):
    assert response.status_code == 400, response.content
    return response.json()["error"]


# Searching by address is searching by the same bytes.


def test_a_search_by_address_finds_what_the_upload_finds(client, gallery, base, allow_private):
    by_url = search_url(client, f"{base}/query.png", k="5").json()
    by_upload = client.post("/api/search", {"image": SimpleUploadedFile("q.png", QUERY), "k": "5"}).json()
    assert by_url["results"] and by_url["results"][0]["id"] == by_upload["results"][0]["id"]
    assert [r["id"] for r in by_url["results"]] == [r["id"] for r in by_upload["results"]]
    assert by_url["results"][0]["id"] == gallery[0].pk  # the same picture as the first item


def test_the_fetch_returns_the_exact_bytes_and_names_itself(base, site, allow_private):
    assert image_fetch_from_url(f"{base}/x.jpg") == JPEG
    assert image_fetch_from_url(f"  {base}/x.jpg?size=large#top  ") == JPEG
    assert site.paths == ["/x.jpg", "/x.jpg?size=large"]


def test_a_redirect_is_followed_up_to_three_times(base, site, allow_private):
    assert image_fetch_from_url(f"{base}/hops/1") == JPEG
    assert image_fetch_from_url(f"{base}/hops/{MAX_REDIRECTS - 1}") == JPEG  # 3 redirects in all
    site.paths.clear()
    with pytest.raises(QueryUrlRefused, match="redirected more than 3 times"):
        image_fetch_from_url(f"{base}/hops/{MAX_REDIRECTS}")
    assert len(site.paths) == MAX_REDIRECTS + 1  # the image itself was never asked for


def test_too_many_redirects_give_400(client, base, allow_private):
    assert "redirected more than 3 times" in error_of(search_url(client, f"{base}/hops/4"))


@pytest.mark.parametrize(
    ("target", "message"),
    [("metadata", PRIVATE_NETWORK), ("zero", PRIVATE_NETWORK), ("ftp", "Only http and https")],
)
def test_every_redirect_target_is_checked_again(client, base, allow_private, target, message):
    """Even with private networks allowed, link-local (cloud metadata) and unspecified
    addresses are never fetched, and a redirect does not escape the checks."""
    assert message in error_of(search_url(client, f"{base}/to/{target}"))


def test_an_error_answer_is_named(client, base, allow_private):
    assert error_of(search_url(client, f"{base}/missing.jpg")) == "The address answered 404 Not Found."


@pytest.mark.parametrize("path", ["big", "big-unsized"])
def test_a_body_over_the_upload_limit_is_refused(client, base, site, settings, allow_private, path):
    settings.UPLOAD_MAX_BYTES = 10_000
    message = error_of(search_url(client, f"{base}/{path}"))
    assert message == "The file at this address is larger than 10000 bytes."


def test_a_declared_length_over_the_limit_is_refused_before_reading(client, base, allow_private):
    """The server claims 30 MB and sends a few bytes: the claim alone is refused."""
    message = error_of(search_url(client, f"{base}/huge-claim"))
    assert message == "The file at this address is larger than 20 MB."


@pytest.mark.parametrize("path", ["slow", "trickle", "drip-headers"])
def test_the_time_budget_covers_the_whole_fetch(client, base, settings, allow_private, path):
    settings.QUERY_URL_TIMEOUT = 1
    started = time.monotonic()
    assert error_of(search_url(client, f"{base}/{path}")) == "The address did not answer within 1 second."
    assert time.monotonic() - started < 2.5


def test_a_body_that_is_no_image_gives_the_upload_s_400(client, base, allow_private):
    by_url = error_of(search_url(client, f"{base}/text"))
    by_upload = error_of(
        client.post("/api/search", {"image": SimpleUploadedFile("a.pdf", b"%PDF-1.4 hello")})
    )
    assert by_url == by_upload and "not an image" in by_url


def test_an_unreachable_address_says_so(client, allow_private):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: the connection is refused
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/x.jpg"
        assert error_of(search_url(client, url)) == "The address could not be reached."


@pytest.fixture(scope="module")
def tls_site(tmp_path_factory):
    """The same site over HTTPS, its certificate (self-signed) naming only `localhost`."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = Server(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.paths = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, cert
    server.shutdown()
    server.server_close()


def test_https_connects_to_the_checked_address_and_verifies_the_host_name(
    tls_site, monkeypatch, allow_private
):
    server, cert = tls_site
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trust the test certificate
    port = server.server_port
    # Connected to 127.0.0.1, verified as `localhost` (SNI and the certificate's name).
    assert image_fetch_from_url(f"https://localhost:{port}/x.jpg") == JPEG
    with pytest.raises(QueryUrlRefused, match="certificate could not be verified"):
        image_fetch_from_url(f"https://127.0.0.1:{port}/x.jpg")  # not a name the certificate gives
    monkeypatch.delenv("SSL_CERT_FILE")
    with pytest.raises(QueryUrlRefused, match="certificate could not be verified"):
        image_fetch_from_url(f"https://localhost:{port}/x.jpg")  # an unknown issuer


# Refusals with the default settings (private networks refused).


def refused_urls(port):
    return {
        f"http://127.0.0.1:{port}/x.jpg": PRIVATE_NETWORK,
        f"http://localhost:{port}/x.jpg": PRIVATE_NETWORK,
        "http://localhost/": PRIVATE_NETWORK,
        f"http://[::1]:{port}/x.jpg": PRIVATE_NETWORK,
        "http://[::1]/": PRIVATE_NETWORK,
        "http://10.0.0.1/": PRIVATE_NETWORK,
        "http://169.254.169.254/latest/meta-data": PRIVATE_NETWORK,
        f"http://2130706433:{port}/x.jpg": PRIVATE_NETWORK,
        "http://2130706433/": PRIVATE_NETWORK,
        f"http://0x7f.1:{port}/x.jpg": PRIVATE_NETWORK,
        f"http://[::ffff:127.0.0.1]:{port}/x.jpg": PRIVATE_NETWORK,
        "http://[::ffff:127.0.0.1]/": PRIVATE_NETWORK,
        f"http://0.0.0.0:{port}/x.jpg": PRIVATE_NETWORK,
        "ftp://example.com/a.jpg": "Only http and https addresses can be searched.",
        "file:///etc/passwd": "Only http and https addresses can be searched.",
        "gopher://127.0.0.1:70/": "Only http and https addresses can be searched.",
        "http://user:pw@example.com/": "Addresses with a user name or password cannot be searched.",
        f"http://user@127.0.0.1:{port}/x.jpg": "Addresses with a user name or password cannot be searched.",
        "http:///x.jpg": "This address has no host name.",
        "http://example.com:99999/": "This address has an invalid port number.",
        "http://example.com/a b.jpg": "This address contains spaces or control characters.",
        "http://example.com/" + "a" * 2048: "This address is too long (over 2048 characters).",
    }


def test_untrusted_addresses_are_refused_before_any_request(client, base, site):
    port = site.server_port
    for url, message in refused_urls(port).items():
        assert error_of(search_url(client, url)) == message, url
    assert site.paths == []  # the loopback server was never asked


def test_a_name_that_resolves_to_loopback_is_refused_as_a_whole(base, site):
    with pytest.raises(QueryUrlRefused, match="private network"):
        image_fetch_from_url(f"http://localhost:{site.server_port}/x.jpg")
    assert site.paths == []


@pytest.mark.parametrize(
    "address",
    [
        "10.1.2.3",
        "192.168.0.1",
        "172.16.5.4",
        "fd00::1",
        "100.64.0.1",
        "0.0.0.0",
        "0.1.2.3",
        "224.0.0.1",
        "239.255.255.250",
        "255.255.255.255",
        "240.0.0.1",
        "127.0.0.1",
        "::1",
        "::",
        "169.254.169.254",
        "fe80::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "2002:7f00:1::",  # 6to4 around 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 around 169.254.169.254
        "192.0.2.1",
        "198.18.0.1",
    ],
)
def test_the_address_check_refuses_every_non_public_address(address):
    assert not address_allowed(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700::1111", "93.184.215.14", "::ffff:8.8.8.8"])
def test_the_address_check_lets_public_addresses_through(address):
    assert address_allowed(ipaddress.ip_address(address))
    assert address_allowed(ipaddress.ip_address(address), allow_private=True)


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "private"),
        ("::1", "private"),
        ("10.1.2.3", "private"),
        ("::ffff:127.0.0.1", "private"),
        ("169.254.169.254", "forbidden"),
        ("fe80::1", "forbidden"),
        ("0.0.0.0", "forbidden"),
        ("::", "forbidden"),
        ("224.0.0.1", "forbidden"),
        ("::ffff:169.254.169.254", "forbidden"),
    ],
)
def test_allowing_private_networks_never_allows_metadata_or_unspecified_addresses(address, kind):
    ip = ipaddress.ip_address(address)
    assert address_kind(ip) == kind
    assert address_allowed(ip, allow_private=True) is (kind == "private")


# Exactly one of image and url.


def test_neither_image_nor_url(client):
    message = error_of(client.post("/api/search", {"k": "3", "url": "  "}))
    assert message == (
        "Please attach an image file (form field 'image') or give its address (form field 'url')."
    )


def test_both_image_and_url(client, base):
    response = client.post(
        "/api/search", {"image": SimpleUploadedFile("q.jpg", JPEG), "url": f"{base}/x.jpg"}
    )
    assert "not both" in error_of(response)


def test_the_openapi_document_offers_image_or_url(client):
    schema = client.get("/api/openapi.json").json()
    body = schema["paths"]["/api/search"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"image", "url", "k", "category", "box"} <= set(body["properties"])
    assert "image" not in body.get("required", [])
    assert "url" in schema["paths"]["/api/search"]["post"]["description"]
