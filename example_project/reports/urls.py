from __future__ import annotations

from django.urls import path

from example_project.reports import views

urlpatterns = [
    path("", views.home, name="home"),
    path("reports/", views.run_report, name="run-report"),
    path("reports/<uuid:job_id>/", views.job_detail, name="job-detail"),
    path("reports/<uuid:job_id>/cancel/", views.cancel_job, name="cancel-job"),
]
