"""Anonymous jobs keep a keyed hash of their session key instead of the key itself.

A session key is a bearer credential: whoever reads it (the admin's job page, a backup, a
read-only database account) can take over the visitor's session. Existing rows are hashed in
place with the current ``SECRET_KEY``; the key cannot be recovered, so going back leaves
anonymous jobs without an owning session.
"""

from django.conf import settings
from django.db import migrations, models
from django.utils.crypto import salted_hmac

# Frozen copies of django_sse.identity's salt and function: a migration must keep doing what
# it did when it was written.
SALT = "django_sse.Job.session_hash"
BATCH_SIZE = 1000


def _hash(session_key):
    return salted_hmac(
        SALT, session_key, secret=settings.SECRET_KEY, algorithm="sha256"
    ).hexdigest()


def hash_session_keys(apps, schema_editor):
    Job = apps.get_model("django_sse", "Job")
    jobs = Job.objects.using(schema_editor.connection.alias)
    # By primary key: the model's ordering (newest first) would sort the whole table.
    rows = jobs.exclude(session_key="").order_by("pk").values_list("pk", "session_key")
    batch = []
    for pk, session_key in rows.iterator(chunk_size=BATCH_SIZE):
        batch.append(Job(pk=pk, session_hash=_hash(session_key)))
        if len(batch) == BATCH_SIZE:
            jobs.bulk_update(batch, ["session_hash"])
            batch = []
    if batch:
        jobs.bulk_update(batch, ["session_hash"])


class Migration(migrations.Migration):
    dependencies = [
        ("django_sse", "0003_compact_event_json"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="session_hash",
            field=models.CharField(
                blank=True, default="", editable=False, max_length=64, verbose_name="session hash"
            ),
        ),
        migrations.RunPython(hash_session_keys, migrations.RunPython.noop, elidable=True),
        migrations.RemoveIndex(model_name="job", name="django_sse_job_session_idx"),
        migrations.RemoveField(model_name="job", name="session_key"),
        migrations.AddIndex(
            model_name="job",
            index=models.Index(
                fields=["session_hash", "-created_at"], name="django_sse_job_shash_idx"
            ),
        ),
    ]
