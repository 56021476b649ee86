from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.urls import URLPattern, URLResolver, include, path, re_path
from django.views.static import serve

from gallery.api import api


def serve_media(request: HttpRequest, path: str) -> HttpResponseBase:
    """MEDIA_ROOT read at request time, not when the URLconf is imported."""
    return serve(request, path, document_root=str(settings.MEDIA_ROOT))


urlpatterns: list[URLPattern | URLResolver] = [
    path("admin/", admin.site.urls),
    path("api/", api.urls),
    path("", include("gallery.urls")),
]

if settings.SERVE_MEDIA:
    # Stored files are re-encoded by us; SecurityMiddleware adds nosniff to every response.
    urlpatterns += [re_path(r"^media/(?P<path>.*)$", serve_media)]
