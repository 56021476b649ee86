"""Gallery items and their embeddings. The database is the source of truth; the HNSW index
is a derived, rebuildable copy of the embeddings of visible items."""

import hashlib
import secrets
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import models
from django.db.models import Exists, OuterRef, Q
from django.urls import reverse

from .learning.spec import Kind as ModelKind


class ImageQuerySet(models.QuerySet["Image"]):
    """The visibility rules, written once: who may see an item, what may be indexed."""

    def searchable(self) -> "ImageQuerySet":
        """What the public may find in search, similar items and browsing: indexed and approved."""
        return self.filter(status=Image.Status.INDEXED, moderation=Image.Moderation.APPROVED)

    def unsearchable(self) -> "ImageQuerySet":
        return self.exclude(status=Image.Status.INDEXED, moderation=Image.Moderation.APPROVED)

    def indexable(self) -> "ImageQuerySet":
        """What belongs in the index (now or once embedded): approved, indexed or processing."""
        return self.filter(
            status__in=[Image.Status.INDEXED, Image.Status.PROCESSING], moderation=Image.Moderation.APPROVED
        )

    def public(self) -> "ImageQuerySet":
        """Whose page the public may open: approved and not hidden (processing ones too)."""
        return self.filter(moderation=Image.Moderation.APPROVED).exclude(status=Image.Status.HIDDEN)

    def processing(self) -> "ImageQuerySet":
        return self.filter(status=Image.Status.PROCESSING)

    def with_vector(self, model_name: str) -> "ImageQuerySet":
        return self.filter(embeddings__model_name=model_name)

    def without_vector(self, model_name: str) -> "ImageQuerySet":
        return self.exclude(embeddings__model_name=model_name)

    def without_hash(self) -> "ImageQuerySet":
        return self.filter(pdq__isnull=True)

    def lacking(self, model_names: list[str]) -> "ImageQuerySet":
        """Images still missing a vector of one of these models, or their perceptual hash."""
        return self.filter(Q(pdq__isnull=True) | _missing_vector(model_names))

    def lacking_vectors(self, model_names: list[str]) -> "ImageQuerySet":
        """Images missing a vector of one of these models."""
        return self.filter(_missing_vector(model_names))

    def complete(self, model_names: list[str]) -> "ImageQuerySet":
        """Images with a vector of every one of these models and their perceptual hash."""
        qs = self.filter(pdq__isnull=False)
        for name in model_names:
            qs = qs.filter(Exists(_vector_of(name)))
        return qs


def _missing_vector(model_names: list[str]) -> Q:
    missing = Q(pk__in=[])  # matches nothing: no model, nothing missing
    for name in model_names:
        missing |= Q(~Exists(_vector_of(name)))
    return missing


def _vector_of(model_name: str) -> models.QuerySet["Embedding"]:
    """The outer image's vector under one model, as a correlated subquery: looked up by the
    (image, model) index for each image asked about. `pk IN (every image_id of the model)`
    read the whole table of vectors (6.6 GB at a million items) on every index update."""
    return Embedding.objects.filter(image_id=OuterRef("pk"), model_name=model_name)


class Image(models.Model):
    class Status(models.TextChoices):
        PROCESSING = "processing"  # stored, waiting for its embedding / index entry
        INDEXED = "indexed"  # searchable
        FAILED = "failed"  # embedding gave up; `error` says why
        HIDDEN = "hidden"  # taken out of search by staff (or rejected)

    class Moderation(models.TextChoices):
        APPROVED = "approved"
        PENDING = "pending"  # pre-moderation: waits for staff before it can be searched
        REJECTED = "rejected"

    title = models.CharField(max_length=200, blank=True)
    category = models.CharField(max_length=100, blank=True, db_index=True)
    file = models.FileField(upload_to="images/%Y/%m/", db_index=True)  # indexed: media requests look it up
    thumbnail = models.FileField(upload_to="thumbs/%Y/%m/", db_index=True)
    original_name = models.CharField(max_length=255, blank=True)
    original_format = models.CharField(max_length=10)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    byte_size = models.PositiveIntegerField(help_text="Size of the uploaded file in bytes.")
    sha256 = models.CharField(max_length=64, unique=True, help_text="Hash of the uploaded bytes.")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PROCESSING, db_index=True)
    moderation = models.CharField(
        max_length=10, choices=Moderation.choices, default=Moderation.APPROVED, db_index=True
    )
    tags = models.JSONField(default=list, blank=True)
    external_id = models.CharField(max_length=200, null=True, blank=True, unique=True)
    pdq = models.BinaryField(
        max_length=32, null=True, blank=True, help_text="PDQ perceptual hash (256 bits): finds copies."
    )
    pdq_quality = models.PositiveSmallIntegerField(null=True, blank=True)
    near_duplicate_of = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The existing item this upload is a copy of (by the copy tiers of search).",
    )
    near_duplicate_explanation = models.CharField(
        max_length=200, blank=True, help_text='Why it is a copy, in search\'s words ("a crop of this photo").'
    )
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    error = models.TextField(blank=True)
    embed_attempts = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    indexed_at = models.DateTimeField(null=True, blank=True)

    objects = ImageQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "category"])]

    def __str__(self):
        return self.title or f"Image {self.pk}"

    def get_absolute_url(self):
        return reverse("gallery:item", args=[self.pk])

    @property
    def is_public(self) -> bool:
        """The rule of `ImageQuerySet.public` for one loaded item."""
        return self.moderation == self.Moderation.APPROVED and self.status != self.Status.HIDDEN

    @property
    def is_searchable(self) -> bool:
        """The rule of `ImageQuerySet.searchable` for one loaded item."""
        return self.moderation == self.Moderation.APPROVED and self.status == self.Status.INDEXED


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

    def __str__(self):
        return f"{self.model_name} vector of image {self.image_id}"

    def as_array(self) -> np.ndarray:
        return np.frombuffer(bytes(self.vector), dtype=np.float32)


class IndexChange(models.Model):
    """One change of a model's index, numbered in the order the single index writer made it.
    The journal every process replays onto the snapshot it loaded: an update costs what
    changed, not a rewrite and reload of the whole index."""

    class Op(models.IntegerChoices):
        ADD = 1, "add"  # add or replace (the vector and hash are read from the database)
        REMOVE = 2, "remove"

    id = models.BigAutoField(primary_key=True)
    model_name = models.CharField(max_length=100)
    image_id = models.BigIntegerField()  # not a foreign key: a deleted image is removed too
    op = models.PositiveSmallIntegerField(choices=Op.choices)

    class Meta:
        indexes = [models.Index(fields=["model_name", "id"], name="index_change_model_seq")]

    def __str__(self):
        return f"{self.get_op_display()} {self.image_id} in {self.model_name} (#{self.id})"


class BackgroundRun(models.Model):
    """When a long background job (an import, a training run) was created, started, finished."""

    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True
        ordering = ["-created_at"]


class ImportJob(BackgroundRun):
    """A bulk import: its files are ImportItem rows, so a job resumes where it stopped and
    running it again adds nothing twice. Counts (imported, duplicates, failed) are derived
    from the items' states (selectors.import_job_progress)."""

    class State(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"
        CANCELLED = "cancelled"

    class Source(models.TextChoices):
        ZIP = "zip", "Uploaded ZIP"
        FOLDER = "folder", "Folder on the server"
        MANIFEST = "manifest", "Manifest (CSV or JSON lines)"

    source_kind = models.CharField(max_length=10, choices=Source.choices)
    source_path = models.CharField(max_length=1000)
    category = models.CharField(max_length=100, blank=True, help_text="Overrides folder names.")
    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED, db_index=True)
    total = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    started_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)

    def __str__(self):
        return f"Import {self.pk} ({self.get_source_kind_display()})"

    @property
    def is_active(self) -> bool:
        return self.state in (self.State.QUEUED, self.State.RUNNING)


class ImportItem(models.Model):
    class State(models.TextChoices):
        PENDING = "pending"
        IMPORTED = "imported"
        DUPLICATE = "duplicate"
        FAILED = "failed"

    job = models.ForeignKey(ImportJob, on_delete=models.CASCADE, related_name="items")
    position = models.PositiveIntegerField()
    path = models.CharField(max_length=1000)
    title = models.CharField(max_length=200, blank=True)
    category = models.CharField(max_length=100, blank=True)
    tags = models.JSONField(default=list, blank=True)
    external_id = models.CharField(max_length=200, blank=True)
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING, db_index=True)
    error = models.TextField(blank=True)
    image = models.ForeignKey(Image, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["position"]
        constraints = [models.UniqueConstraint(fields=["job", "position"], name="one_item_per_position")]

    def __str__(self):
        return f"{self.path} ({self.state})"


class ModerationAction(models.Model):
    """The moderation log: who did what to which image, when and why."""

    class Action(models.TextChoices):
        APPROVE = "approve"
        REJECT = "reject"
        HIDE = "hide"
        UNHIDE = "unhide"
        REPORT = "report"
        DISMISS = "dismiss"

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="moderation_actions")
    action = models.CharField(max_length=10, choices=Action.choices)
    reason = models.CharField(max_length=500, blank=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return f"{self.action} image {self.image_id}"


class Report(models.Model):
    """A visitor's report of an item; open reports land in the moderation queue."""

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="reports")
    reason = models.CharField(max_length=500)
    reporter = models.CharField(
        max_length=40, blank=True, help_text="The visitor (an account or a hashed address)."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["image", "reporter"],
                condition=models.Q(resolved_at__isnull=True) & ~models.Q(reporter=""),
                name="one_open_report_per_visitor",
            )
        ]

    def __str__(self):
        return f"Report on image {self.image_id}: {self.reason}"


def _new_token() -> str:  # also named by migration 0001
    return secrets.token_hex(24)


class ApiToken(models.Model):
    """A bearer token for scripts acting as a staff user on the JSON API. Only its SHA-256
    is stored (the key is shown once, when it is made): whoever reads the table or the admin
    cannot act as the token's user."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(max_length=8, editable=False, help_text="The key's first characters.")
    name = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return f"{self.name or 'token'} for {self.user}"

    @staticmethod
    def digest(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    @staticmethod
    def new_key() -> str:
        return _new_token()


class ModelVersion(BackgroundRun):
    """One embedding model: a pretrained backbone or a network trained here. Its `name` is the
    `Embedding.model_name` of its vectors; its files live in MODELS_DIR/<name>/ (weights,
    checkpoints, loss curve, confusion matrix). At most one version is active: the one whose
    vectors and index serve searches."""

    Kind = ModelKind  # the kinds and their labels, in the table of what each takes (learning.spec)

    class State(models.TextChoices):
        QUEUED = "queued"
        TRAINING = "training"
        READY = "ready"
        FAILED = "failed"
        CANCELLED = "cancelled"

    class Activation(models.TextChoices):
        NONE = "none"
        ACTIVATING = "activating"
        ACTIVE = "active"
        FAILED = "failed"

    name = models.SlugField(max_length=100, unique=True)
    kind = models.CharField(max_length=12, choices=Kind.choices)
    spec = models.JSONField(default=dict, help_text="Everything needed to rebuild the network.")
    data_source = models.CharField(
        max_length=1000, blank=True, help_text="Folder or ZIP; empty: the gallery."
    )
    minutes = models.FloatField(default=10.0)
    epochs = models.FloatField(null=True, blank=True)
    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED, db_index=True)
    progress = models.JSONField(default=dict, blank=True)
    history = models.JSONField(default=list, blank=True, help_text="[seconds, epoch, loss] rows.")
    log = models.TextField(blank=True)
    error = models.TextField(blank=True)
    dim = models.PositiveIntegerField(default=0)
    bits = models.PositiveSmallIntegerField(default=0)
    metrics = models.JSONField(default=dict, blank=True, help_text="Training summary.")
    evaluations = models.JSONField(default=dict, blank=True, help_text="Figures per protocol.")
    cancel_requested = models.BooleanField(default=False)
    is_active = models.BooleanField(default=False)
    activation = models.CharField(max_length=10, choices=Activation.choices, default=Activation.NONE)
    activation_progress = models.JSONField(default=dict, blank=True)
    activation_started_at = models.DateTimeField(null=True, blank=True)
    activated_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)

    class Meta(BackgroundRun.Meta):
        constraints = [
            models.UniqueConstraint(
                fields=["is_active"], condition=models.Q(is_active=True), name="one_active_model"
            )
        ]

    def __str__(self):
        return self.name

    @property
    def workdir(self) -> Path:
        return Path(settings.MODELS_DIR) / self.name

    @property
    def weights_path(self) -> Path:
        return self.workdir / "model.pt"

    @property
    def is_ready(self) -> bool:
        return self.state == self.State.READY


class DuplicateScan(BackgroundRun):
    """A pass over the copy index that groups the items that are copies of one picture (run as
    a task: at a large gallery it takes minutes). Its groups are kept for the staff page, which
    pages through them; the next scan replaces them."""

    class State(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED, db_index=True)
    items = models.PositiveIntegerField(default=0, help_text="Items the scan looked at.")
    error = models.TextField(blank=True)
    started_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)

    def __str__(self) -> str:
        return f"duplicate scan {self.pk} ({self.state})"


class DuplicateGroupRow(models.Model):
    """One group a scan found: its items, the oldest first (the one to keep), each with why it
    counts as a copy of the others."""

    scan = models.ForeignKey(DuplicateScan, on_delete=models.CASCADE, related_name="groups")
    rank = models.PositiveIntegerField()  # largest groups first
    members = models.JSONField(help_text="[[image id, explanation], ...], the oldest first.")

    class Meta:
        ordering = ["scan", "rank"]
        constraints = [models.UniqueConstraint(fields=["scan", "rank"], name="one_group_per_rank")]

    def __str__(self) -> str:
        return f"group {self.rank} of scan {self.scan_id}: {len(self.members)} items"
