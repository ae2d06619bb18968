"""Channel-layer names. Channels allows ASCII letters, digits, "-", "_" and "." in group names,
shorter than 100 characters."""

from __future__ import annotations

import uuid

from django_sse.conf import conf

EVENT_MESSAGE_TYPE = "django_sse.event"


def job_group(job_id: uuid.UUID) -> str:
    """The group that receives every event of one job (``<prefix>.job.<hex>``)."""
    return f"{conf.GROUP_PREFIX}.job.{job_id.hex}"
