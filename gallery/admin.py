from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from . import selectors, services
from .forms import ImportJobForm, ModelEvaluateForm, ModelTrainingForm
from .importing import SourceError
from .models import (
    ApiToken,
    Embedding,
    Image,
    ImportJob,
    ModelVersion,
    ModerationAction,
    Report,
)


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin):
    list_display = ("thumb", "title", "category", "status", "created_at", "error")
    list_filter = ("status", "category")
    search_fields = ("title", "category", "sha256", "original_name")
    readonly_fields = (
        "thumb",
        "file",
        "thumbnail",
        "original_name",
        "original_format",
        "width",
        "height",
        "byte_size",
        "sha256",
        "status",
        "error",
        "embed_attempts",
        "created_at",
        "updated_at",
        "indexed_at",
    )
    fields = ("thumb", "title", "category", *readonly_fields[1:])
    actions = ["approve", "reject", "hide", "unhide"]

    def _moderate(self, request, queryset, action):
        count = services.images_moderate(
            list(queryset.values_list("pk", flat=True)), action, actor=request.user
        )
        self.message_user(request, f"{action.capitalize()}: {count} images.", messages.SUCCESS)

    @admin.action(description="Approve")
    def approve(self, request, queryset):
        self._moderate(request, queryset, "approve")

    @admin.action(description="Reject")
    def reject(self, request, queryset):
        self._moderate(request, queryset, "reject")

    @admin.action(description="Hide from search")
    def hide(self, request, queryset):
        self._moderate(request, queryset, "hide")

    @admin.action(description="Show in search again")
    def unhide(self, request, queryset):
        self._moderate(request, queryset, "unhide")

    @admin.display(description="")
    def thumb(self, obj):
        if not obj.thumbnail:
            return ""
        return format_html('<img src="{}" style="height:64px;border-radius:4px">', obj.thumbnail.url)

    def has_add_permission(self, request):
        return False  # uploads go through the upload page / API / import_images (one path)


@admin.register(Embedding)
class EmbeddingAdmin(admin.ModelAdmin):
    list_display = ("image", "model_name", "dim", "created_at")
    list_filter = ("model_name",)
    raw_id_fields = ("image",)


@admin.register(ImportJob)
class ImportJobAdmin(admin.ModelAdmin):
    """Bulk imports: the add page starts a job, the change page is its live progress."""

    list_display = ("id", "source_kind", "source_path", "state", "progress", "started_by", "created_at")
    list_filter = ("state", "source_kind")

    @admin.display(description="progress")
    def progress(self, obj):
        p = selectors.import_job_progress(obj)
        return f"{p['percent']}% ({p['imported']} new, {p['duplicates']} duplicates, {p['failed']} failed)"

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("<int:pk>/progress.json", wrap(self.progress_json), name="gallery_importjob_progress"),
            path("<int:pk>/cancel/", wrap(require_POST(self.cancel_view)), name="gallery_importjob_cancel"),
            path("<int:pk>/resume/", wrap(require_POST(self.resume_view)), name="gallery_importjob_resume"),
            *super().get_urls(),
        ]

    def has_change_permission(self, request, obj=None):
        """No edit form: a job is changed only by cancel and resume (the model permission)."""
        return obj is not None and super().has_change_permission(request, obj)

    def _get(self, request, pk, *, change=False) -> ImportJob:
        """The job, when the user holds the model permission for what is asked."""
        job = get_object_or_404(ImportJob, pk=pk)
        allowed = (
            super().has_change_permission(request, job)
            if change
            else self.has_view_permission(request, job) or super().has_change_permission(request, job)
        )
        if not allowed:
            raise PermissionDenied
        return job

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            return redirect("admin:index")
        form = ImportJobForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                if data["source_kind"] == ImportJob.Source.ZIP:
                    source = services.import_upload_store(data["archive"])
                else:
                    source = services.import_root_path(data["path"])
                job = services.import_job_create(
                    kind=data["source_kind"], path=source, category=data["category"], started_by=request.user
                )
                services.import_job_start(job)
            except SourceError as exc:
                form.add_error(None, str(exc))
            else:
                return redirect(reverse("admin:gallery_importjob_change", args=[job.pk]))
        context = {
            **self.admin_site.each_context(request),
            "title": "Start a bulk import",
            "form": form,
            "opts": self.model._meta,
            "import_root": settings.IMPORT_ROOT,
        }
        return TemplateResponse(request, "admin/gallery/importjob/start.html", context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        job = self._get(request, object_id)
        context = {
            **self.admin_site.each_context(request),
            "title": str(job),
            "job": job,
            "progress": selectors.import_job_progress(job),
            "failures": selectors.import_job_failures(job),
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/gallery/importjob/progress.html", context)

    def progress_json(self, request, pk):
        return JsonResponse(selectors.import_job_progress(self._get(request, pk)))

    def cancel_view(self, request, pk):
        job = self._get(request, pk, change=True)
        if services.import_job_cancel(job):
            self.message_user(request, "Import cancelled.", messages.SUCCESS)
        return redirect(reverse("admin:gallery_importjob_change", args=[pk]))

    def resume_view(self, request, pk):
        job = self._get(request, pk, change=True)
        services.import_job_start(job)
        self.message_user(request, "Import resumed.", messages.SUCCESS)
        return redirect(reverse("admin:gallery_importjob_change", args=[pk]))


@admin.register(ModerationAction)
class ModerationActionAdmin(admin.ModelAdmin):
    """The moderation log (read-only)."""

    list_display = ("created_at", "action", "image", "actor", "reason")
    list_filter = ("action",)
    search_fields = ("reason", "image__title")
    raw_id_fields = ("image",)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Report)
class ReportAdmin(admin.ModelAdmin):
    list_display = ("created_at", "image", "reason", "resolved_at", "resolved_by")
    list_filter = (("resolved_at", admin.EmptyFieldListFilter),)
    raw_id_fields = ("image",)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are made here; the key is shown once, in the message after saving (only its
    hash is kept); a token cannot be changed, only deleted."""

    list_display = ("name", "user", "prefix", "created_at")
    fields = ("user", "name")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None and super().has_change_permission(request, obj)

    def save_model(self, request: HttpRequest, obj: ApiToken, form: Any, change: bool) -> None:
        token, key = services.api_token_issue(obj.user, obj.name)
        obj.pk, obj.key_hash, obj.prefix = token.pk, token.key_hash, token.prefix
        messages.warning(request, f"The token's key is {key} — copy it now: it is not shown again.")


# --- embedding models: display helpers (presentation only; the work is in services) --------


def _evaluations_summary(version: ModelVersion) -> dict:
    out = {}
    for protocol, figures in (version.evaluations or {}).items():
        summary = {k: v for k, v in figures.items() if k not in ("confusion", "confusion_png")}
        summary["rows"] = selectors.model_evaluation_rows(figures)
        summary["confusion_url"] = (
            reverse("admin:gallery_modelversion_confusion", args=[version.pk, protocol])
            if figures.get("confusion_png")
            else None
        )
        out[protocol] = summary
    return out


def _model_status(version: ModelVersion) -> dict:
    """What the progress page shows and polls."""
    return {
        "name": version.name,
        "state": version.state,
        "is_active": version.is_active,
        "cancel_requested": version.cancel_requested,
        "progress": version.progress,
        "percent": selectors.model_training_percent(version),
        "activation": version.activation,
        "activation_progress": version.activation_progress,
        "activation_percent": selectors.model_activation_percent(version),
        "metrics": version.metrics,
        "evaluations": _evaluations_summary(version),
        "error": version.error,
        "log": version.log,
        "has_loss_chart": (version.workdir / "loss.png").is_file(),
    }


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    """Embedding models: the add page starts a training run, the change page is its live
    progress, results and the buttons that act on it (all through `services`)."""

    list_display = ("name", "kind", "state", "summary", "bits", "active", "created_at")
    list_filter = ("state", "kind", "is_active")
    search_fields = ("name",)

    @admin.display(description="progress / result")
    def summary(self, obj):
        return selectors.model_version_headline(obj)

    @admin.display(description="active", boolean=True, ordering="is_active")
    def active(self, obj):
        return obj.is_active

    def get_urls(self):
        wrap = self.admin_site.admin_view
        name = "gallery_modelversion_"
        return [
            path("<int:pk>/progress.json", wrap(self.progress_json), name=name + "progress"),
            path("<int:pk>/loss.png", wrap(self.loss_png), name=name + "loss"),
            path("<int:pk>/confusion/<str:protocol>.png", wrap(self.confusion_png), name=name + "confusion"),
            path("<int:pk>/cancel/", wrap(require_POST(self.cancel_view)), name=name + "cancel"),
            path("<int:pk>/resume/", wrap(require_POST(self.resume_view)), name=name + "resume"),
            path("<int:pk>/activate/", wrap(require_POST(self.activate_view)), name=name + "activate"),
            path("<int:pk>/evaluate/", wrap(require_POST(self.evaluate_view)), name=name + "evaluate"),
            *super().get_urls(),
        ]

    def has_delete_permission(self, request, obj=None):
        return False  # no service removes a version's vectors, index and files

    def _get(self, request, pk, *, change=False) -> ModelVersion:
        version = get_object_or_404(ModelVersion, pk=pk)
        allowed = (
            self.has_change_permission(request, version)
            if change
            else self.has_view_or_change_permission(request, version)
        )
        if not allowed:
            raise PermissionDenied
        return version

    def _back(self, pk):
        return redirect(reverse("admin:gallery_modelversion_change", args=[pk]))

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = ModelTrainingForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                version = services.model_version_create(**form.service_kwargs(), created_by=request.user)
            except ValueError as exc:
                form.add_error(None, str(exc))
            else:
                return self._back(version.pk)
        context = {
            **self.admin_site.each_context(request),
            "title": "Train a model",
            "form": form,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/gallery/modelversion/train.html", context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        version = self._get(request, object_id)
        status = _model_status(version)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Model {version.name}",
            "version": version,
            "status": status,
            "evaluate_form": ModelEvaluateForm(),
            "can_change": self.has_change_permission(request, version),
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/gallery/modelversion/progress.html", context)

    def progress_json(self, request, pk):
        return JsonResponse(_model_status(self._get(request, pk)))

    def _png(self, path):
        if not path.is_file():
            raise Http404("No such chart yet.")
        response = FileResponse(path.open("rb"), content_type="image/png")
        response["Cache-Control"] = "no-cache"
        return response

    def loss_png(self, request, pk):
        return self._png(self._get(request, pk).workdir / "loss.png")

    def confusion_png(self, request, pk, protocol):
        version = self._get(request, pk)
        figures = (version.evaluations or {}).get(protocol) or {}
        if not figures.get("confusion_png"):
            raise Http404("No confusion matrix for this protocol.")
        return self._png(Path(figures["confusion_png"]))

    def cancel_view(self, request, pk):
        if services.model_train_cancel(self._get(request, pk, change=True)):
            self.message_user(request, "Training cancelled.", messages.SUCCESS)
        else:
            self.message_user(request, "Nothing to cancel.", messages.WARNING)
        return self._back(pk)

    def resume_view(self, request, pk):
        if services.model_train_resume(self._get(request, pk, change=True)):
            self.message_user(request, "Training resumed from its last checkpoint.", messages.SUCCESS)
        else:
            self.message_user(request, "Only a cancelled or failed run can be resumed.", messages.WARNING)
        return self._back(pk)

    def activate_view(self, request, pk):
        version = self._get(request, pk, change=True)
        try:
            services.model_activate_start(version)
        except ValueError as exc:
            self.message_user(request, str(exc), messages.ERROR)
        else:
            self.message_user(
                request,
                "Activation queued: searches use the current model until it is done.",
                messages.SUCCESS,
            )
        return self._back(pk)

    def evaluate_view(self, request, pk):
        version = self._get(request, pk, change=True)
        form = ModelEvaluateForm(request.POST)
        if not form.is_valid():
            errors = "; ".join(str(e) for errs in form.errors.values() for e in errs)
            self.message_user(request, f"Evaluation not started: {errors}", messages.ERROR)
            return self._back(pk)
        protocol = form.cleaned_data["protocol"]
        try:
            services.model_evaluate_start(version, protocol, form.cleaned_data["data"], form.limits())
        except ValueError as exc:
            self.message_user(request, str(exc), messages.ERROR)
        else:
            self.message_user(
                request,
                f"Evaluation {protocol} queued; its figures appear below when done.",
                messages.SUCCESS,
            )
        return self._back(pk)
