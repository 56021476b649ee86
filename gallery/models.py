"""Gallery items and their embeddings. The database is the source of truth; the HNSW index
is a derived, rebuildable copy of the embeddings of visible items."""

import numpy as np
from django.db import models
from django.urls import reverse


class Image(models.Model):
    class Status(models.TextChoices):
        PROCESSING = "processing"  # stored, waiting for its embedding / index entry
        INDEXED = "indexed"  # searchable
        FAILED = "failed"  # embedding gave up; `error` says why
        HIDDEN = "hidden"  # taken out of search by staff

    title = models.CharField(max_length=200, blank=True)
    category = models.CharField(max_length=100, blank=True, db_index=True)
    file = models.FileField(upload_to="images/%Y/%m/")
    thumbnail = models.FileField(upload_to="thumbs/%Y/%m/")
    original_name = models.CharField(max_length=255, blank=True)
    original_format = models.CharField(max_length=10)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    byte_size = models.PositiveIntegerField(help_text="Size of the uploaded file in bytes.")
    sha256 = models.CharField(max_length=64, unique=True, help_text="Hash of the uploaded bytes.")
    status = models.CharField(
        max_length=12, choices=Status.choices, default=Status.PROCESSING, db_index=True
    )
    error = models.TextField(blank=True)
    embed_attempts = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    indexed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "category"])]

    def __str__(self):
        return self.title or f"Image {self.pk}"

    def get_absolute_url(self):
        return reverse("gallery:item", args=[self.pk])


class Embedding(models.Model):
    """One image's vector under one embedder; float32 bytes, L2-normalised."""

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="embeddings")
    model_name = models.CharField(max_length=100)
    dim = models.PositiveIntegerField()
    vector = models.BinaryField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["image", "model_name"], name="one_embedding_per_model")
        ]

    def as_array(self) -> np.ndarray:
        return np.frombuffer(bytes(self.vector), dtype=np.float32)
