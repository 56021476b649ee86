from django.urls import path

from . import staff_views, views

app_name = "gallery"

urlpatterns = [
    path("", views.home, name="home"),
    path("browse/", views.browse, name="browse"),
    path("items/<int:pk>/", views.item, name="item"),
    path("upload/", views.upload, name="upload"),
    path("items/<int:pk>/report/", views.report, name="report"),
    path("moderation/", staff_views.moderation_queue, name="moderation"),
    path("moderation/act/", staff_views.moderation_act, name="moderation-act"),
    path("moderation/log/", staff_views.moderation_log, name="moderation-log"),
    path("moderation/duplicates/", staff_views.near_duplicates, name="duplicates"),
    path("moderation/duplicates/scan/", staff_views.near_duplicates_scan, name="duplicates-scan"),
]
