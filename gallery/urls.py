from django.urls import path

from . import views

app_name = "gallery"

urlpatterns = [
    path("", views.home, name="home"),
    path("browse/", views.browse, name="browse"),
    path("items/<int:pk>/", views.item, name="item"),
    path("upload/", views.upload, name="upload"),
]
