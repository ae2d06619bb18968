from __future__ import annotations

from django.urls import path

from django_sse import snapshot, views

app_name = "django_sse"

urlpatterns = [
    path("events/", views.session_events, name="events"),
    path("jobs/<str:job_id>/", snapshot.job_detail, name="job-detail"),
    path("jobs/<str:job_id>/events/", views.job_events, name="job-events"),
    path("jobs/<str:job_id>/cancel/", views.job_cancel, name="job-cancel"),
]
