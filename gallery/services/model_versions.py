"""Embedding models: create a version, train it (the train queue), cancel, resume and
evaluate it. Switching searches to a version is `activation`."""

import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, TextField, Value
from django.db.models.functions import Concat, Right
from django.utils import timezone

from ..embedders import get_embedder, model_ref, pretrained_ref
from ..learning import charts, protocols
from ..learning.data import LabelledImages, from_gallery, from_path
from ..learning.spec import TRAINED_KINDS, check_bits, make_spec
from ..models import ModelVersion
from ..selectors.catalogue import training_rows
from . import dispatch
from .inputs import acting_user

if TYPE_CHECKING:
    from ..learning.trainer import Progress

log = logging.getLogger(__name__)

MODEL_KINDS_TRAINED = TRAINED_KINDS

ProgressCallback = Callable[[dict[str, Any]], None]


def model_version_default() -> ModelVersion:
    """The record of the configured default embedder (created on first use, active when no
    other model is), so it can be evaluated and re-activated like any other."""
    ref = pretrained_ref(settings.EMBEDDER)
    version, _ = ModelVersion.objects.get_or_create(
        name=ref.name,
        defaults={
            "kind": ModelVersion.Kind.PRETRAINED,
            "spec": {"backbone": ref.backbone, "pooling": ref.pooling},
            "state": ModelVersion.State.READY,
            "dim": ref.dim,
        },
    )
    if not ModelVersion.objects.filter(is_active=True).exists():
        with transaction.atomic():
            if not ModelVersion.objects.select_for_update().filter(is_active=True).exists():
                ModelVersion.objects.filter(pk=version.pk).update(
                    is_active=True, activation=ModelVersion.Activation.ACTIVE
                )
        version.refresh_from_db()
    return version


def _unique_model_name(base: str) -> str:
    existing = set(ModelVersion.objects.filter(name__startswith=base).values_list("name", flat=True))
    n = 1
    while f"{base}-v{n}" in existing:
        n += 1
    return f"{base}-v{n}"


def model_version_create(
    kind: str,
    *,
    data: str = "",
    minutes: float = 10.0,
    epochs: float | None = None,
    bits: int = 0,
    options: dict[str, Any] | None = None,
    name: str = "",
    created_by: Any = None,
    start: bool = True,
) -> ModelVersion:
    """A new model version. Pretrained backbones are ready at once; the others are queued
    for training (dispatched after commit). `options` override the kind's defaults
    (`learning.spec.OPTIONS`)."""
    options = dict(options or {})
    bits = int(bits or options.pop("bits", 0) or 0)
    if kind == ModelVersion.Kind.PRETRAINED:
        backbone = options.get("backbone") or settings.EMBEDDER
        ref = pretrained_ref(backbone, options.get("pooling", "avg"))
        version, _ = ModelVersion.objects.get_or_create(
            name=ref.name,
            defaults={
                "kind": kind,
                "spec": {"backbone": ref.backbone, "pooling": ref.pooling},
                "state": ModelVersion.State.READY,
                "dim": ref.dim,
                "created_by": acting_user(created_by),
            },
        )
        return version
    if data and not Path(data).exists():
        raise ValueError(f"{data} does not exist")
    if minutes <= 0 and not epochs:
        raise ValueError("Give a positive number of minutes or epochs")
    check_bits(kind, bits)
    spec = make_spec(kind, bits=bits or None, **options)
    dim = bits or int(spec["dim"])
    base = f"{kind}-{bits}bit" if bits else kind
    version = ModelVersion.objects.create(
        name=name or _unique_model_name(base),
        kind=kind,
        spec=spec,
        data_source=str(data or ""),
        minutes=minutes,
        epochs=epochs,
        dim=dim,
        bits=bits or 0,
        created_by=acting_user(created_by),
    )
    shutil.rmtree(version.workdir, ignore_errors=True)  # left by a deleted version of that name
    if start:
        model_train_start(version)
    return version


def model_train_start(version: ModelVersion) -> None:
    dispatch.model_train(version.pk)


LOG_KEPT = 20_000  # characters of a version's log kept (the admin page shows them)


def model_version_log(version_id: int, line: str, **fields: Any) -> None:
    """One time-stamped line at the end of the version's log, with `fields` set in the same
    statement. Appended by the database: a resumed run's first line does not overwrite the
    cancelled run's last one (read and written back by each, one was lost), and whoever sees
    the new state (ready, cancelled, failed) sees the line that says so."""
    stamp = timezone.now().strftime("%H:%M:%S")
    text = TextField()
    appended = Right(
        Concat(F("log"), Value(f"{stamp} {line}\n"), output_field=text), LOG_KEPT, output_field=text
    )
    ModelVersion.objects.filter(pk=version_id).update(log=appended, **fields)


class _TrainingWatch:
    """The trainer's callbacks for one version: its progress into the database (at most once
    a second; the loss curve redrawn after each checkpoint), and whether staff cancelled it
    (read at most every 2 seconds)."""

    def __init__(self, version: ModelVersion, on_progress: ProgressCallback | None) -> None:
        self.version = version
        self.on_progress = on_progress
        self.last_report = 0.0
        self.last_check = 0.0
        self.cancelled = False
        self.chart_mtime = 0.0

    def report(self, progress: "Progress") -> None:
        now = time.monotonic()
        if now - self.last_report < 1.0 and progress.stage != "done":
            return
        self.last_report = now
        ModelVersion.objects.filter(pk=self.version.pk).update(
            progress=progress.as_dict(), updated_at=timezone.now()
        )
        history_file = self.version.workdir / "history.json"
        if history_file.exists() and history_file.stat().st_mtime > self.chart_mtime:
            self.chart_mtime = history_file.stat().st_mtime  # a checkpoint was saved: redraw the curve
            _draw_loss_curve(self.version, json.loads(history_file.read_text()))
        if self.on_progress:
            self.on_progress(progress.as_dict())

    def should_stop(self) -> bool:
        now = time.monotonic()
        if now - self.last_check >= 2.0:
            self.last_check = now
            self.cancelled = ModelVersion.objects.filter(pk=self.version.pk, cancel_requested=True).exists()
        return self.cancelled


def _draw_loss_curve(version: ModelVersion, history: list[list[float]]) -> None:
    charts.loss_curve(history, version.workdir / "loss.png", title=f"{version.name}: training loss")


def _training_images(version: ModelVersion) -> LabelledImages:
    if version.data_source:
        return from_path(version.data_source, split="train")
    return from_gallery(training_rows())


def model_train(version_id: int, *, on_progress: ProgressCallback | None = None) -> ModelVersion:
    """Train (or continue training) a queued version. Idempotent: a finished or cancelled
    version is left as it is; a run cut by a restart resumes from its last checkpoint."""
    from ..learning.trainer import Cancelled, Trainer  # the trainer imports torch

    version = ModelVersion.objects.get(pk=version_id)
    if version.state not in (ModelVersion.State.QUEUED, ModelVersion.State.TRAINING):
        return version
    if version.cancel_requested:
        ModelVersion.objects.filter(pk=version_id).update(state=ModelVersion.State.CANCELLED)
        return ModelVersion.objects.get(pk=version_id)
    resumed = version.state == ModelVersion.State.TRAINING
    ModelVersion.objects.filter(pk=version_id).update(
        state=ModelVersion.State.TRAINING, started_at=version.started_at or timezone.now(), error=""
    )
    model_version_log(version_id, "resumed after a restart" if resumed else "training started")
    watch = _TrainingWatch(version, on_progress)
    try:
        images = _training_images(version)
        model_version_log(
            version_id, f"{len(images)} images, {len(images.classes)} categories from {images.source}"
        )
        trainer = Trainer(
            version.spec,
            images,
            version.workdir,
            minutes=version.minutes,
            epochs=version.epochs,
            report=watch.report,
            should_stop=watch.should_stop,
        )
        result = trainer.run()
    except Cancelled:
        model_version_log(
            version_id, "cancelled", state=ModelVersion.State.CANCELLED, finished_at=timezone.now()
        )
        return ModelVersion.objects.get(pk=version_id)
    except Exception as exc:
        log.exception("Training of model %s failed", version_id)
        model_version_log(
            version_id,
            f"failed: {exc}",
            state=ModelVersion.State.FAILED,
            error=f"{type(exc).__name__}: {exc}"[:2000],
            finished_at=timezone.now(),
        )
        return ModelVersion.objects.get(pk=version_id)
    history = result.pop("history")
    _draw_loss_curve(version, history)
    model_version_log(
        version_id,
        f"done: {result['epochs']} epochs in {result['train_seconds']} s",
        state=ModelVersion.State.READY,
        metrics=result,
        history=history,
        spec=trainer.spec,
        finished_at=timezone.now(),
    )
    return ModelVersion.objects.get(pk=version_id)


def model_train_cancel(version: ModelVersion) -> bool:
    if version.state == ModelVersion.State.QUEUED:
        ModelVersion.objects.filter(pk=version.pk, state=ModelVersion.State.QUEUED).update(
            state=ModelVersion.State.CANCELLED, cancel_requested=True, finished_at=timezone.now()
        )
        return True
    if version.state == ModelVersion.State.TRAINING:
        ModelVersion.objects.filter(pk=version.pk).update(cancel_requested=True)
        return True
    return False


def model_train_reopen(version: ModelVersion) -> bool:
    """A cancelled or failed run goes back to queued, to continue from its last checkpoint
    (here, or on the train worker after `model_train_start`)."""
    if version.state not in (ModelVersion.State.CANCELLED, ModelVersion.State.FAILED):
        return False
    ModelVersion.objects.filter(pk=version.pk).update(
        state=ModelVersion.State.QUEUED, cancel_requested=False, error="", finished_at=None
    )
    return True


def model_train_resume(version: ModelVersion) -> bool:
    """Continue a cancelled or failed run from its last checkpoint, on the train worker."""
    if not model_train_reopen(version):
        return False
    model_train_start(version)
    return True


def model_evaluate_start(version: ModelVersion, protocol: str, data: str, limits: dict[str, int]) -> None:
    """Queue an evaluation on the train worker; its figures are stored with the version."""
    if not version.is_ready:
        raise ValueError(f"{version.name} is not ready.")
    dispatch.model_evaluate(version.pk, protocol, data, limits)


def model_evaluate(
    version_id: int,
    protocol: str,
    data: str,
    *,
    limits: dict[str, int | None] | None = None,
    report: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Run an evaluation protocol on a ready version; the figures are stored with it."""
    version = ModelVersion.objects.get(pk=version_id)
    if not version.is_ready:
        raise ValueError(f"{version.name} is not ready (state: {version.state})")
    if protocol not in protocols.PROTOCOLS:
        raise ValueError(f"Unknown protocol {protocol!r}: one of {', '.join(protocols.PROTOCOLS)}")
    limits = limits or {}
    embedder = get_embedder(model_ref(version))

    def progress(info: dict[str, Any]) -> None:
        ModelVersion.objects.filter(pk=version_id).update(
            progress={**info, "evaluating": protocol}, updated_at=timezone.now()
        )
        if report:
            report(info)

    if protocol == "cifar10":
        result = protocols.cifar10(
            embedder,
            data,
            db_limit=limits.get("db"),
            query_limit=limits.get("queries"),
            bits=version.bits,
            report=progress,
        )
        picture = version.workdir / f"confusion-{protocol}.png"
        charts.confusion_matrix(
            result["confusion"], result["classes"], picture, title=f"{version.name}: {protocol}"
        )
        result["confusion_png"] = str(picture)
    else:
        result = protocols.neardup(
            embedder,
            data,
            catalogue_limit=limits.get("db"),
            queries=limits.get("queries") or 500,
            report=progress,
        )
    result.update(
        protocol=protocol, data=str(data), evaluated_at=timezone.now().isoformat(timespec="seconds")
    )
    with transaction.atomic():
        version = ModelVersion.objects.select_for_update().get(pk=version_id)
        version.evaluations = {**version.evaluations, protocol: result}
        version.progress = {"stage": "evaluated", "evaluating": protocol, "done": 1, "total": 1}
        version.save(update_fields=["evaluations", "progress", "updated_at"])
    return result
