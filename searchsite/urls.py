from django.conf import settings
from django.contrib import admin
from django.urls import URLPattern, URLResolver, include, path, re_path

from gallery import ops_views, views
from gallery.api import api

urlpatterns: list[URLPattern | URLResolver] = [
    path("healthz", ops_views.healthz, name="healthz"),
    path("readyz", ops_views.readyz, name="readyz"),
    path("metrics", ops_views.metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("api/", api.urls),
    path("", include("gallery.urls")),
]

if settings.SERVE_MEDIA:
    # Through a view that checks the item's visibility (stored files are re-encoded by us;
    # SecurityMiddleware adds nosniff). With SERVE_MEDIA off the front server must not serve
    # MEDIA_ROOT itself: use MEDIA_ACCEL_REDIRECT instead.
    urlpatterns += [re_path(r"^media/(?P<path>.+)$", views.media, name="media")]
