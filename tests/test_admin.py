from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from django_sse import publish
from django_sse.models import Job

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client_logged_in() -> Client:
    admin = User.objects.create_superuser("admin", "admin@example.com", "pw")
    client = Client()
    client.force_login(admin)
    return client


def test_changelist_shows_owner_status_and_progress(admin_client_logged_in: Client) -> None:
    owner = User.objects.create(username="ann")
    job = Job.objects.create(owner=owner, name="Quarterly report")
    job.set_progress(3, 12)
    response = admin_client_logged_in.get("/admin/django_sse/job/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "Quarterly report" in html
    assert "ann" in html
    assert "3/12 (25%)" in html


def test_change_page_lists_events_read_only(admin_client_logged_in: Client) -> None:
    job = Job.objects.create(name="Export")
    publish(job, "step", {"n": 1})
    response = admin_client_logged_in.get(f"/admin/django_sse/job/{job.pk}/change/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "step" in html
    # Events can be neither added nor edited nor deleted from the job page.
    assert 'name="events-0-type"' not in html
    assert "events-0-DELETE" not in html
    (inline,) = response.context["inline_admin_formsets"]
    assert (inline.has_add_permission, inline.has_change_permission) == (False, False)
    assert inline.has_delete_permission is False
