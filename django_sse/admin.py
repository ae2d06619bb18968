from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _

from django_sse.models import Job, JobEvent

if TYPE_CHECKING:
    _InlineBase = admin.TabularInline[JobEvent, Job]
    _JobAdminBase = admin.ModelAdmin[Job]
else:  # the admin classes are not subscriptable at run time
    _InlineBase = admin.TabularInline
    _JobAdminBase = admin.ModelAdmin


class JobEventInline(_InlineBase):
    model = JobEvent
    fields = ("seq", "type", "data", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ("seq",)
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Events are numbered without gaps; deleting one would break resuming streams.
        return False


@admin.register(Job)
class JobAdmin(_JobAdminBase):
    list_display = (
        "name",
        "owner",
        "status",
        "progress",
        "created_at",
        "updated_at",
        "finished_at",
        "cancel_requested_at",
    )
    list_filter = ("status", "created_at")
    search_fields = ("id", "name", "owner__username", "message")
    date_hierarchy = "created_at"
    list_select_related = ("owner",)
    # State changes go through the lifecycle helpers, which record the event streams need.
    readonly_fields = (
        "id",
        "session_hash",
        "status",
        "current",
        "total",
        "message",
        "result",
        "error",
        "last_seq",
        "created_at",
        "updated_at",
        "finished_at",
        "cancel_requested_at",
    )
    raw_id_fields = ("owner",)
    inlines = (JobEventInline,)

    @admin.display(description=_("progress"))
    def progress(self, obj: Job) -> str:
        percent = obj.percent
        if percent is None:
            return str(obj.current) if obj.current else "-"
        return f"{obj.current}/{obj.total} ({percent:.0f}%)"
