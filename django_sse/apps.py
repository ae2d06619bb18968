from __future__ import annotations

from django.apps import AppConfig
from django.core.signals import setting_changed
from django.utils.translation import gettext_lazy as _

from django_sse import metrics
from django_sse.conf import clear_cache


class DjangoSseConfig(AppConfig):
    name = "django_sse"
    verbose_name = _("Job progress (SSE)")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported here, once the app registry is ready (Django's place for it): importing
        # the checks registers them.
        from django_sse import checks  # noqa: F401  (registers the checks)

        setting_changed.connect(clear_cache, dispatch_uid="django_sse.clear_conf_cache")
        setting_changed.connect(
            metrics.clear_on_setting_changed, dispatch_uid="django_sse.clear_metrics"
        )
