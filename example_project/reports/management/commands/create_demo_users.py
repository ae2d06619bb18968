"""Create (or reset) the example's users: demo/demo, other/other and admin/admin."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

# (username, password, is_superuser). Two plain users, so that one can check that the other's
# stream answers 404; a superuser for /admin/.
DEMO_USERS = (
    ("demo", "demo", False),
    ("other", "other", False),
    ("admin", "admin", True),
)


class Command(BaseCommand):
    help = "Create the example's demo users, or reset their passwords if they exist."

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        for username, password, is_superuser in DEMO_USERS:
            user, created = User.objects.get_or_create(username=username)
            # Weak passwords on purpose: set directly, past the password validators.
            user.set_password(password)
            user.is_staff = user.is_superuser = is_superuser
            user.save()
            verb = "Created" if created else "Reset"
            self.stdout.write(f"{verb} user {username!r} (password {password!r}).")
