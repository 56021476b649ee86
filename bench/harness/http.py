"""A small HTTP client on the standard library (`requests` is not a dependency of the project):
multipart encoding, `Api` (the JSON API) and `Session` (cookies, CSRF, the admin pages)."""

from __future__ import annotations

import http.client
import http.cookies
import json
import re
import time
import urllib.parse
import uuid
from collections.abc import Container
from pathlib import Path, PurePosixPath
from typing import Any


def encode_multipart(fields: dict, files: dict) -> tuple[bytes, str]:
    """files: name -> (filename, bytes, content type)."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    for name, (filename, data, ctype) in files.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: {ctype}\r\n\r\n".encode()
        )
        parts.append(data)
        parts.append(b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def content_type(filename: str) -> str:
    ext = Path(filename).suffix.lower()
    return {".png": "image/png", ".webp": "image/webp"}.get(ext, "image/jpeg")


class ApiError(RuntimeError):
    pass


class Api:
    """One keep-alive connection (use one instance per thread). Reconnects once when the server
    closed an idle connection."""

    def __init__(self, base_url: str, timeout: float = 300) -> None:
        url = urllib.parse.urlsplit(base_url)
        self.host, self.port, self.timeout = url.hostname, url.port, timeout
        self.conn: http.client.HTTPConnection | None = None
        self.last_headers: http.client.HTTPMessage | None = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, bytes]:
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                resp = self.conn.getresponse()
                self.last_headers = resp.headers
                data = resp.read()
                if resp.will_close:
                    self.close()
                return resp.status, data
            except (
                http.client.RemoteDisconnected,
                http.client.CannotSendRequest,
                ConnectionResetError,
                BrokenPipeError,
            ):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def json(
        self,
        method: str,
        path: str,
        *,
        fields: dict | None = None,
        files: dict | None = None,
        ok: Container[int] = (200,),
    ) -> tuple[int, Any]:
        body, headers = None, {}
        if files is not None or fields is not None:
            body, ctype = encode_multipart(fields or {}, files or {})
            headers["Content-Type"] = ctype
        status, data = self.request(method, path, body, headers)
        try:
            payload = json.loads(data) if data else None
        except json.JSONDecodeError:
            payload = None
        if status not in ok:
            raise ApiError(f"{method} {path} -> HTTP {status}: {data[:300]!r}")
        return status, payload

    def search(self, data: bytes, filename: str = "query.jpg", k: int = 10, category: str = "") -> dict:
        fields = {"k": str(k)}
        if category:
            fields["category"] = category
        _, payload = self.json(
            "POST", "/api/search", fields=fields, files={"image": (filename, data, content_type(filename))}
        )
        return payload

    def upload(self, data: bytes, filename: str, title: str = "", category: str = "") -> tuple[int, dict]:
        return self.json(
            "POST",
            "/api/images",
            fields={"title": title, "category": category},
            files={"image": (filename, data, content_type(filename))},
            ok=(200, 201),
        )

    def image(self, image_id: int) -> dict:
        return self.json("GET", f"/api/images/{image_id}")[1]


def upload_until_searchable(api: Api, data: bytes, name: str, *, poll: float, timeout: float) -> dict | None:
    """Upload `data` (`POST /api/images`), then search with the same bytes until the new id
    answers: the upload request's time and the time until searchable, in seconds. None when the
    server already had these bytes (a duplicate)."""
    stem = PurePosixPath(name).stem
    t0 = time.perf_counter()
    status, body = api.upload(data, f"{stem}.jpg", title=f"upload {stem}", category="bench-upload")
    uploaded = time.perf_counter() - t0
    if status != 201:
        return None
    image_id, polls = body["id"], 0
    while time.perf_counter() - t0 < timeout:
        hits = [r["id"] for r in api.search(data, f"{stem}.jpg", k=10)["results"]]
        polls += 1
        if image_id in hits:
            return {
                "id": image_id,
                "name": name,
                "upload_s": uploaded,
                "searchable_s": time.perf_counter() - t0,
            }
        if polls % 20 == 0 and api.image(image_id)["status"] == "failed":
            raise RuntimeError(f"upload {name} (id {image_id}) failed to embed")
        time.sleep(poll)
    raise RuntimeError(f"upload {name} (id {image_id}) was not searchable after {timeout:.0f} s")


class Session(Api):
    """An Api that keeps cookies like a browser (enough for Django's session and CSRF cookies),
    for the admin pages. One instance per thread."""

    def __init__(self, base_url: str, timeout: float = 300) -> None:
        super().__init__(base_url, timeout)
        self.cookies: dict[str, str] = {}

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, bytes]:
        headers = dict(headers or {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        self.last_headers = None
        status, data = super().request(method, path, body, headers)
        for raw in (self.last_headers.get_all("Set-Cookie") if self.last_headers else None) or []:
            jar = http.cookies.SimpleCookie()
            jar.load(raw)
            for name, morsel in jar.items():
                if not morsel.value or morsel["max-age"] == "0":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return status, data

    def location(self) -> str:
        """The Location header of the last response (a redirect's target), or ''."""
        return (self.last_headers.get("Location") if self.last_headers else None) or ""

    def csrf_token(self, path: str) -> str:
        """The `csrfmiddlewaretoken` of the form on the page at `path`."""
        status, data = self.request("GET", path)
        m = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', data)
        if status != 200 or not m:
            raise ApiError(f"GET {path} -> HTTP {status}: no CSRF token in the page")
        return m[1].decode()

    def post_form(self, path: str, fields: dict) -> tuple[int, bytes]:
        body = urllib.parse.urlencode(fields).encode()
        return self.request("POST", path, body, {"Content-Type": "application/x-www-form-urlencoded"})

    def post_multipart(self, path: str, fields: dict, files: dict) -> tuple[int, bytes]:
        body, ctype = encode_multipart(fields, files)
        return self.request("POST", path, body, {"Content-Type": ctype})

    def admin_login(self, username: str, password: str, prefix: str = "/admin/") -> None:
        token = self.csrf_token(f"{prefix}login/")
        status, data = self.post_form(
            f"{prefix}login/",
            {"csrfmiddlewaretoken": token, "username": username, "password": password, "next": prefix},
        )
        if status != 302 or "sessionid" not in self.cookies:
            raise ApiError(f"admin login as {username!r} failed (HTTP {status}): {data[:300]!r}")
