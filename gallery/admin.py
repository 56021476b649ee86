from django.contrib import admin, messages
from django.utils.html import format_html

from . import services
from .models import Embedding, Image


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
        count = services.images_moderate(list(queryset.values_list("pk", flat=True)), action, actor=request.user)
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
