from django.conf import settings
from django.contrib import admin, messages
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from . import selectors, services
from .forms import ImportJobForm
from .importing import SourceError
from .models import ApiToken, Embedding, Image, ImportItem, ImportJob, ModerationAction, Report


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
    fields = ("thumb", "title", "category") + readonly_fields[1:]
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
        ] + super().get_urls()

    def has_change_permission(self, request, obj=None):
        return False if obj is None else request.user.is_staff

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
        job = get_object_or_404(ImportJob, pk=object_id)
        context = {
            **self.admin_site.each_context(request),
            "title": str(job),
            "job": job,
            "progress": selectors.import_job_progress(job),
            "failures": job.items.filter(state=ImportItem.State.FAILED)[:500],
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/gallery/importjob/progress.html", context)

    def progress_json(self, request, pk):
        job = get_object_or_404(ImportJob, pk=pk)
        return JsonResponse(selectors.import_job_progress(job))

    def cancel_view(self, request, pk):
        job = get_object_or_404(ImportJob, pk=pk)
        if services.import_job_cancel(job):
            self.message_user(request, "Import cancelled.", messages.SUCCESS)
        return redirect(reverse("admin:gallery_importjob_change", args=[pk]))

    def resume_view(self, request, pk):
        job = get_object_or_404(ImportJob, pk=pk)
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
    list_display = ("name", "user", "created_at")
    readonly_fields = ("key",)
