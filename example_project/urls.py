from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

urlpatterns = [
    path("", include("example_project.reports.urls")),
    path("sse/", include("django_sse.urls")),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    # LogoutView accepts POST only (Django 5.0+): the page has a small form for it.
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
]
