"""Who a visitor is, for ownership, log lines and the per-visitor stream limit.

A visitor is a user (by primary key) or, when nobody is logged in, an anonymous session. A job
of an anonymous visitor stores a keyed hash of the session key (HMAC-SHA256 with the
``SECRET_KEY``), never the key itself: a session key is a bearer credential, and the job table is
read by the admin, by backups and by anybody with database access. The hash is checked with the
``SECRET_KEY_FALLBACKS`` too, so rotating the secret the documented way keeps anonymous visitors'
jobs theirs.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from django.conf import settings
from django.utils.crypto import constant_time_compare, salted_hmac

# Changing it would orphan every anonymous job (migration 0004 hashes with the same salt).
SESSION_HASH_SALT = "django_sse.Job.session_hash"
SESSION_HASH_LENGTH = 64


def _hash(session_key: str, secret: Any) -> str:
    digest = salted_hmac(SESSION_HASH_SALT, session_key, secret=secret, algorithm="sha256")
    return digest.hexdigest()


def hash_session_key(session_key: str) -> str:
    """The value stored in ``Job.session_hash`` for a job of this session."""
    return _hash(session_key, settings.SECRET_KEY)


def session_hashes(session_key: str) -> list[str]:
    """The hashes this session's jobs may carry: with the current secret, then the fallbacks."""
    secrets = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", ())]
    return [_hash(session_key, secret) for secret in secrets]


def session_owns(stored_hash: str, session_key: str | None) -> bool:
    """Whether a job's ``session_hash`` is this session's (in constant time)."""
    if not stored_hash or not session_key:
        return False
    matches = [constant_time_compare(stored_hash, h) for h in session_hashes(session_key)]
    return any(matches)


class Identity(NamedTuple):
    """A visitor as streams see them: a user id, or an anonymous session's key."""

    user_id: Any  # None for an anonymous visitor
    session_key: str | None

    @classmethod
    def of(cls, user: Any, session_key: str | None) -> Identity:
        if user is not None and getattr(user, "is_authenticated", False):
            return cls(user.pk, session_key)
        return cls(None, session_key)

    @property
    def anonymous(self) -> bool:
        return self.user_id is None

    @property
    def known(self) -> bool:
        """Whether any job could be this visitor's (a user, or a session with a key)."""
        return self.user_id is not None or bool(self.session_key)

    @property
    def label(self) -> str:
        """For log lines: the user id, or "anonymous" (a session key is never logged)."""
        return "anonymous" if self.user_id is None else str(self.user_id)

    @property
    def limit_key(self) -> str:
        """The key of the per-visitor stream limit: the user, or the session's hash."""
        if self.user_id is not None:
            return f"user:{self.user_id}"
        return f"session:{hash_session_key(self.session_key or '')}"
