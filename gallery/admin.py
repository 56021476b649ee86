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
    actions = ["hide", "unhide"]

    @admin.action(description="Hide from search")
    def hide(self, request, queryset):
        count = services.images_hide(list(queryset.values_list("pk", flat=True)))
        self.message_user(request, f"{count} images hidden.", messages.SUCCESS)

    @admin.action(description="Show in search again")
    def unhide(self, request, queryset):
        count = services.images_unhide(list(queryset.values_list("pk", flat=True)))
        self.message_user(request, f"{count} images will be searchable again in a moment.", messages.SUCCESS)

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
