from typing import Any

import cv2
from django.apps import AppConfig
from django.conf import settings
from django.db.models.signals import post_migrate


def _record_default_model(**kwargs: Any) -> None:
    """Every `migrate` (and so every `make run`) makes sure the configured default embedder
    has its model version, so staff can evaluate and re-activate it like any other."""
    from .services.model_versions import model_version_default  # models load after the app registry

    model_version_default()


class GalleryConfig(AppConfig):
    name = "gallery"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        if settings.OPENCV_THREADS > 0:
            cv2.setNumThreads(settings.OPENCV_THREADS)
        post_migrate.connect(_record_default_model, sender=self, dispatch_uid="gallery-default-model")
