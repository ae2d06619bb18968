from __future__ import annotations

from django.urls import path

from example_project.reports import views

urlpatterns = [
    path("", views.home, name="home"),
    path("reports/", views.run_report, name="run-report"),
    path("reports/batch/", views.run_batch, name="run-batch"),
    path("reports/<uuid:job_id>/", views.job_detail, name="job-detail"),
    path("reports/<uuid:job_id>/htmx/", views.job_htmx, name="job-htmx"),
    path("reports/<uuid:job_id>/cancel/", views.cancel_job, name="cancel-job"),
]
